/* Snapshots, server-side copies and the page-range diff on Azure: the parts of AzureStore
 * (store.ts) that issue #15 added, through the same call()/eachPage() funnel. A snapshot is
 * addressed by BlobRef.snapshot (store.ts's blob() binds the client to it). */

import type { BlobClient, BlobItem, ContainerClient } from '@azure/storage-blob';
import { BlobdiskError, isKind } from '../../errors';
import { PAGE_SIZE, type BlobRef, type ByteRange, type CopyStatus, type PageDiff, type SnapshotInfo } from '../types';
import { invalid, kindOf, lowerKeys, mergeRanges, quoteEtag } from './convert';
import type { ErrorContext } from './errors';

type Ctx = Omit<ErrorContext, 'host'>;

/** What these operations use of the store: its request funnel and its clients. */
export interface StoreIo {
  call<T>(ctx: Ctx, fn: (signal: AbortSignal) => Promise<T>, callerSignal?: AbortSignal): Promise<T>;
  eachPage<P extends { continuationToken?: string | undefined }>(
    ctx: Ctx,
    byPage: (settings: { continuationToken?: string }, abortSignal: AbortSignal) => AsyncIterableIterator<P>,
    each: (page: P) => void,
    callerSignal?: AbortSignal,
  ): Promise<void>;
  container(name: string): ContainerClient;
  blob(ref: BlobRef): BlobClient;
  ctx(op: string, ref: BlobRef): Ctx;
  /** What the store learned of the service (see listSnapshots). */
  readonly memo: { flatSnapshots: boolean };
}

/** Writes to a snapshot would reach Azure only to be refused: refuse them here. */
function writable(op: string, ref: BlobRef): void {
  if (ref.snapshot !== undefined) throw invalid(op, ref, `snapshot ${ref.snapshot} is read-only`);
}

export async function createSnapshot(io: StoreIo, ref: BlobRef, metadata?: Record<string, string>): Promise<string> {
  writable('createSnapshot', ref);
  const r = await io.call(io.ctx('createSnapshot', ref), (abortSignal) =>
    io.blob(ref).createSnapshot({ ...(metadata !== undefined ? { metadata } : {}), abortSignal }),
  );
  if (r.snapshot === undefined) throw new BlobdiskError('failed', 'createSnapshot failed: Azure answered without a snapshot id');
  return r.snapshot;
}

function snapshotOf(item: BlobItem): SnapshotInfo {
  return {
    name: item.name,
    snapshot: item.snapshot,
    kind: kindOf(item.properties.blobType),
    size: item.properties.contentLength ?? 0,
    etag: quoteEtag(item.properties.etag),
    lastModified: item.properties.lastModified,
    metadata: lowerKeys(item.metadata),
  };
}

/** One level is listed by hierarchy (include=snapshots with delimiter '/'), so a directory's
 *  listing does not walk its subdirectories; a service that refuses that combination (400)
 *  is asked flat from then on, and what lies deeper is filtered out here. */
export async function listSnapshots(io: StoreIo, container: string, prefix: string, deep: boolean): Promise<SnapshotInfo[]> {
  const out: SnapshotInfo[] = [];
  const client = io.container(container);
  const ctx = { op: 'listSnapshots', container };
  const each = (items: readonly BlobItem[]): void => {
    for (const item of items) {
      // The SDK types it as a string, but base blobs come without one.
      if (!item.snapshot || (!deep && item.name.includes('/', prefix.length))) continue;
      out.push(snapshotOf(item));
    }
  };
  const options = { prefix, includeSnapshots: true, includeMetadata: true };
  const flat = (): Promise<void> => io.eachPage(ctx, (settings, abortSignal) => client.listBlobsFlat({ ...options, abortSignal }).byPage(settings), (page) => each(page.segment.blobItems));
  if (deep || io.memo.flatSnapshots) {
    await flat();
  } else {
    try {
      await io.eachPage(ctx, (settings, abortSignal) => client.listBlobsByHierarchy('/', { ...options, abortSignal }).byPage(settings), (page) => each(page.segment.blobItems));
    } catch (e) {
      if (!isKind(e, 'invalid')) throw e;
      io.memo.flatSnapshots = true;
      out.length = 0;
      await flat();
    }
  }
  return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : a.snapshot < b.snapshot ? -1 : a.snapshot > b.snapshot ? 1 : 0));
}

/** Starts Copy Blob and returns its state as Azure answers the start. Within one account Copy
 *  Blob authorizes the source by our Shared Key; with a SAS the source URL carries it. */
export async function startCopy(io: StoreIo, source: BlobRef, target: BlobRef, metadata?: Record<string, string>): Promise<CopyStatus> {
  writable('startCopy', target);
  const sourceUrl = io.blob(source).url;
  const ctx = { op: `copy ${source.container}/${source.name} to`, container: target.container, blob: target.name };
  const state = await io.call(ctx, async (abortSignal) => {
    const poller = await io.blob(target).beginCopyFromURL(sourceUrl, { ...(metadata !== undefined ? { metadata } : {}), abortSignal });
    return poller.getOperationState();
  });
  return state.result?.copyStatus ?? 'pending';
}

const COPY_POLL_MS = [200, 500, 1000, 2000] as const;

/** Copies `source` to `target` and waits until Azure has finished (polling the target). */
export async function copyBlob(io: StoreIo, source: BlobRef, target: BlobRef): Promise<void> {
  let status = await startCopy(io, source, target);
  const ctx = { op: `copy ${source.container}/${source.name} to`, container: target.container, blob: target.name };
  const dest = io.blob(target);
  for (let i = 0; status === 'pending'; i++) {
    await new Promise((done) => setTimeout(done, COPY_POLL_MS[Math.min(i, COPY_POLL_MS.length - 1)] ?? 2000));
    const p = await io.call(ctx, (abortSignal) => dest.getProperties({ abortSignal }));
    status = p.copyStatus ?? 'success';
  }
  if (status !== 'success') throw new BlobdiskError('failed', `${ctx.op} ${target.container}/${target.name} failed: the server-side copy ended as ${status}`);
}

export async function pageRangesDiff(io: StoreIo, ref: BlobRef, since: string, start: number, end: number): Promise<PageDiff> {
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0) throw invalid('pageRangesDiff', ref, `bad window ${start}-${end}`);
  if (end <= start) return { changed: [], cleared: [] };
  const from = start - (start % PAGE_SIZE);
  const to = Math.ceil(end / PAGE_SIZE) * PAGE_SIZE;
  const client = io.blob(ref).getPageBlobClient();
  const changed: ByteRange[] = [];
  const cleared: ByteRange[] = [];
  // Azure's ends are inclusive.
  const clip = (r: { start: number; end: number }): ByteRange => ({ start: Math.max(r.start, start), end: Math.min(r.end + 1, end) });
  await io.eachPage(
    io.ctx('pageRangesDiff', ref),
    (settings, abortSignal) => client.listPageRangesDiff(from, to - from, since, { abortSignal }).byPage(settings),
    (page) => {
      for (const r of page.pageRange ?? []) changed.push(clip(r));
      for (const r of page.clearRange ?? []) cleared.push(clip(r));
    },
  );
  return { changed: mergeRanges(changed), cleared: mergeRanges(cleared) };
}
