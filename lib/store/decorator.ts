/* The base of store decorators (faulty.ts, metered.ts): a BlobStore that wraps another and
 * passes every call through one method, around(), which sees the operation and the blob.
 * Stacked like s3backer's layers: new MeteredStore(new FaultyStore(new AzureStore(...))). */

import type { BlobInfo, BlobRef, BlobStore, BlockInfo, ByteRange, CopyStatus, Listing, PageDiff, ReadBody, ReadOptions, SnapshotInfo, WriteConditions } from './types';

/** The operations of a store (its methods but close()). */
export type StoreOp = Exclude<keyof BlobStore, 'close' | 'emulator'>;

/** The blob (or container) a call is about, as far as it names one. */
export interface Target {
  readonly container?: string;
  readonly name?: string;
}

export abstract class StoreDecorator implements BlobStore {
  constructor(protected readonly inner: BlobStore) {}

  /** Runs `call` (the wrapped store's operation `op` on `target`): the one place a
   *  decorator acts. */
  protected abstract around<T>(op: StoreOp, target: Target, call: () => Promise<T>): Promise<T>;

  listContainers(): Promise<string[]> {
    return this.around('listContainers', {}, () => this.inner.listContainers());
  }
  checkContainer(container: string): Promise<void> {
    return this.around('checkContainer', { container }, () => this.inner.checkContainer(container));
  }
  createContainer(container: string): Promise<void> {
    return this.around('createContainer', { container }, () => this.inner.createContainer(container));
  }
  listDirectory(container: string, prefix: string): Promise<Listing> {
    return this.around('listDirectory', { container }, () => this.inner.listDirectory(container, prefix));
  }
  getInfo(ref: BlobRef): Promise<BlobInfo> {
    return this.around('getInfo', ref, () => this.inner.getInfo(ref));
  }
  read(ref: BlobRef, offset: number, length: number, options?: ReadOptions): Promise<ReadBody> {
    return this.around('read', ref, () => this.inner.read(ref, offset, length, options));
  }
  pageRanges(ref: BlobRef, start: number, end: number, options?: ReadOptions): Promise<ByteRange[]> {
    return this.around('pageRanges', ref, () => this.inner.pageRanges(ref, start, end, options));
  }
  blockList(ref: BlobRef): Promise<BlockInfo[]> {
    return this.around('blockList', ref, () => this.inner.blockList(ref));
  }
  createPageBlob(ref: BlobRef, size: number, options?: { metadata?: Record<string, string>; overwrite?: boolean }): Promise<string> {
    return this.around('createPageBlob', ref, () => this.inner.createPageBlob(ref, size, options));
  }
  createBlockBlob(ref: BlobRef, options?: { metadata?: Record<string, string>; overwrite?: boolean }): Promise<string> {
    return this.around('createBlockBlob', ref, () => this.inner.createBlockBlob(ref, options));
  }
  resizePageBlob(ref: BlobRef, size: number, conditions?: WriteConditions): Promise<string> {
    return this.around('resizePageBlob', ref, () => this.inner.resizePageBlob(ref, size, conditions));
  }
  putPages(ref: BlobRef, offset: number, data: Buffer, conditions?: WriteConditions): Promise<string> {
    return this.around('putPages', ref, () => this.inner.putPages(ref, offset, data, conditions));
  }
  clearPages(ref: BlobRef, offset: number, length: number, conditions?: WriteConditions): Promise<string> {
    return this.around('clearPages', ref, () => this.inner.clearPages(ref, offset, length, conditions));
  }
  stageBlock(ref: BlobRef, blockId: string, data: Buffer, conditions?: WriteConditions): Promise<void> {
    return this.around('stageBlock', ref, () => this.inner.stageBlock(ref, blockId, data, conditions));
  }
  commitBlockList(ref: BlobRef, blockIds: string[], options?: WriteConditions & { metadata?: Record<string, string> }): Promise<string> {
    return this.around('commitBlockList', ref, () => this.inner.commitBlockList(ref, blockIds, options));
  }
  setMetadata(ref: BlobRef, metadata: Record<string, string>, conditions?: WriteConditions): Promise<string> {
    return this.around('setMetadata', ref, () => this.inner.setMetadata(ref, metadata, conditions));
  }
  deleteBlob(ref: BlobRef, conditions?: WriteConditions): Promise<void> {
    return this.around('deleteBlob', ref, () => this.inner.deleteBlob(ref, conditions));
  }
  copyBlob(source: BlobRef, target: BlobRef): Promise<string> {
    return this.around('copyBlob', target, () => this.inner.copyBlob(source, target));
  }
  createSnapshot(ref: BlobRef, metadata?: Record<string, string>): Promise<string> {
    return this.around('createSnapshot', ref, () => this.inner.createSnapshot(ref, metadata));
  }
  listSnapshots(container: string, prefix: string, deep?: boolean): Promise<SnapshotInfo[]> {
    return this.around('listSnapshots', { container }, () => this.inner.listSnapshots(container, prefix, deep));
  }
  startCopy(source: BlobRef, target: BlobRef, metadata?: Record<string, string>): Promise<CopyStatus> {
    return this.around('startCopy', target, () => this.inner.startCopy(source, target, metadata));
  }
  pageRangesDiff(ref: BlobRef, since: string, start: number, end: number): Promise<PageDiff> {
    return this.around('pageRangesDiff', ref, () => this.inner.pageRangesDiff(ref, since, start, end));
  }
  get emulator(): boolean {
    return this.inner.emulator;
  }
  acquireLease(ref: BlobRef, durationSeconds: number, proposedLeaseId?: string, ifMatch?: string): Promise<string> {
    return this.around('acquireLease', ref, () => this.inner.acquireLease(ref, durationSeconds, proposedLeaseId, ifMatch));
  }
  renewLease(ref: BlobRef, leaseId: string): Promise<void> {
    return this.around('renewLease', ref, () => this.inner.renewLease(ref, leaseId));
  }
  releaseLease(ref: BlobRef, leaseId: string): Promise<void> {
    return this.around('releaseLease', ref, () => this.inner.releaseLease(ref, leaseId));
  }
  breakLease(ref: BlobRef): Promise<void> {
    return this.around('breakLease', ref, () => this.inner.breakLease(ref));
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
