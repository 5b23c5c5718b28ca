/* An in-memory BlobStore with Azure's semantics as blobdisk relies on them: ETags change
 * on every write, page blobs track allocated 512-byte pages, block blobs keep committed and
 * staged blocks, leases and If-Match are enforced. Tests set latency and slow chunked reads
 * here; faults come from wrapping it in a FaultyStore (lib/store/faulty.ts), counters from
 * a MeteredStore (lib/store/metered.ts), as for the Azure store. */

import type { Clock } from '../../lib/clock';
import { randomUUID } from 'node:crypto';
import { BlobdiskError } from '../../lib/errors';
import {
  MAX_COMMITTED_BLOCKS, MAX_PAGE_BLOB_BYTES, MAX_PUT_PAGE_BYTES, PAGE_SIZE,
  type BlobInfo, type BlobKind, type BlobRef, type BlobStore, type BlockInfo, type ByteRange,
  type CopyStatus, type DirectRead, type Listing, type PageDiff, type ReadBody, type ReadOptions, type SnapshotInfo, type WriteConditions,
} from '../../lib/store/types';

/** Tests may change these at any time through `store.settings`. */
export interface MemoryStoreOptions {
  /** Delay before every request is answered. */
  latencyMs?: number;
  /** read() yields the data in pieces of this size (default: one piece)... */
  chunkSize?: number;
  /** ...waiting this long before each piece after the first. */
  chunkDelayMs?: number;
  /** read() also offers the body as a direct read (pulled into the caller's buffers), as
   *  the Azure store does; the pieces arrive as above. */
  direct?: boolean;
  /** Containers that exist from the start. */
  containers?: readonly string[];
  /** Time for Last-Modified and lease expiry (the real clock by default). */
  clock?: Clock;
  /** startCopy leaves copies pending (the target has no content yet) until finishCopies(). */
  copiesPending?: boolean;
  /** What `emulator` reports (false: the service's page-range diff is exact here). */
  emulator?: boolean;
}

interface Lease { id: string; expiresAt: number }

interface MemBlob {
  kind: BlobKind;
  size: number;
  pages: Map<number, Buffer>; // page blobs: page index → 512 bytes
  blocks: { id: string; data: Buffer }[]; // block blobs: committed blocks
  etag: string;
  lastModified: Date;
  /** When the blob last changed (ms): a lease that ran out renews only if nothing changed since. */
  changedAt?: number;
  metadata: Record<string, string>;
  lease?: Lease;
  copyStatus?: CopyStatus;
  /** Snapshots by id (page buffers are shared with the blob until it writes them again, so
   *  an identical buffer means "not written since"). */
  snapshots?: Map<string, MemBlob>;
}

const sleep = (ms: number): Promise<void> => new Promise((done) => setTimeout(done, ms));

export class MemoryStore implements BlobStore {
  private readonly containers = new Map<string, Map<string, MemBlob>>();
  private readonly staged = new Map<string, Map<string, Buffer>>();
  private seq = 0;
  private closed = false;
  /** Pulls of direct reads (settings.direct) so far. */
  directPulls = 0;
  /** Copies left pending (settings.copiesPending): what finishCopies() completes. */
  private readonly pendingCopies: (() => void)[] = [];

  private readonly now = (): number => this.settings.clock?.now() ?? Date.now();

  constructor(readonly settings: MemoryStoreOptions = {}) {
    for (const c of settings.containers ?? []) this.containers.set(c, new Map());
  }

  /** Whole content of a blob (or of its snapshot `ref.snapshot`), for assertions. */
  contentOf(ref: BlobRef): Buffer {
    const blob = this.containers.get(ref.container)?.get(ref.name);
    const b = ref.snapshot === undefined ? blob : blob?.snapshots?.get(ref.snapshot);
    if (b === undefined) throw new BlobdiskError('not-found', `${ref.container}/${ref.name} does not exist`);
    return this.bytes(b, 0, b.size);
  }

  // --- plumbing -------------------------------------------------------------------------

  private async enter(method: keyof BlobStore): Promise<void> {
    if (this.closed) throw new BlobdiskError('failed', `${method} failed: the store is closed`);
    if ((this.settings.latencyMs ?? 0) > 0) await sleep(this.settings.latencyMs ?? 0);
  }

  private fail(code: BlobdiskError['kind'], op: string, ref: BlobRef | string, why: string): BlobdiskError {
    const where = typeof ref === 'string' ? ref : `${ref.container}/${ref.name}`;
    return new BlobdiskError(code, `${op} ${where} failed: ${why}`);
  }

  private container(op: string, name: string): Map<string, MemBlob> {
    const c = this.containers.get(name);
    if (c === undefined) throw this.fail('not-found', op, name, `container ${name} does not exist`);
    return c;
  }

  private find = (op: string, ref: BlobRef): MemBlob | undefined => {
    const b = this.container(op, ref.container).get(ref.name);
    return ref.snapshot === undefined ? b : b?.snapshots?.get(ref.snapshot);
  };

  get emulator(): boolean {
    return this.settings.emulator === true;
  }

  /** Completes the copies startCopy left pending. */
  finishCopies(): void {
    for (const finish of this.pendingCopies.splice(0)) finish();
  }

  private get(op: string, ref: BlobRef, kind?: BlobKind): MemBlob {
    const b = this.find(op, ref);
    if (b === undefined) throw this.fail('not-found', op, ref, 'blob does not exist');
    if (kind !== undefined && b.kind !== kind) throw this.fail('invalid', op, ref, `not a ${kind} blob`);
    return b;
  }

  private activeLease = (b: MemBlob): Lease | undefined => (b.lease !== undefined && b.lease.expiresAt > this.now() ? b.lease : undefined);

  /** Azure's rules for a write: the lease id must match an active lease, If-Match the ETag. */
  private checkWrite(op: string, ref: BlobRef, b: MemBlob, c: WriteConditions | undefined): void {
    if (ref.snapshot !== undefined) throw this.fail('invalid', op, ref, 'a snapshot is read-only');
    const lease = this.activeLease(b);
    if (lease !== undefined && c?.leaseId === undefined) throw this.fail('busy', op, ref, 'the blob is leased and no lease id was given');
    if (lease !== undefined && c?.leaseId !== lease.id) throw this.fail('busy', op, ref, 'the lease id does not match');
    if (lease === undefined && c?.leaseId !== undefined) throw this.fail('busy', op, ref, 'a lease id was given but the blob has no active lease');
    if (c?.ifMatch !== undefined && c.ifMatch !== b.etag) throw this.fail('stale', op, ref, 'the blob changed (ETag mismatch)');
  }

  private touch(b: MemBlob): string {
    b.etag = `"0x${(++this.seq).toString(16).toUpperCase().padStart(15, '0')}"`;
    // Azure's Last-Modified has one-second resolution: two changes within a second look alike.
    b.lastModified = new Date(Math.floor(this.now() / 1000) * 1000);
    b.changedAt = this.now();
    return b.etag;
  }

  private newBlob(kind: BlobKind, size: number, metadata: Record<string, string> | undefined): MemBlob {
    const b: MemBlob = { kind, size, pages: new Map(), blocks: [], etag: '', lastModified: new Date(this.now()), metadata: lower(metadata) };
    this.touch(b);
    return b;
  }

  private bytes(b: MemBlob, start: number, end: number): Buffer {
    if (b.kind !== 'page') return Buffer.concat(b.blocks.map((x) => x.data)).subarray(start, end);
    const out = Buffer.alloc(end - start);
    for (let p = Math.floor(start / PAGE_SIZE); p * PAGE_SIZE < end; p++) {
      const from = Math.max(0, start - p * PAGE_SIZE);
      b.pages.get(p)?.copy(out, p * PAGE_SIZE + from - start, from, Math.min(PAGE_SIZE, end - p * PAGE_SIZE));
    }
    return out;
  }

  private info = (name: string, b: MemBlob): BlobInfo => ({
    name, kind: b.kind, size: b.size, etag: b.etag, lastModified: b.lastModified, metadata: { ...b.metadata }, leased: this.activeLease(b) !== undefined,
    ...(b.copyStatus !== undefined ? { copyStatus: b.copyStatus } : {}),
  });

  private create(op: string, ref: BlobRef, blob: MemBlob, overwrite: boolean | undefined): string {
    const c = this.container(op, ref.container);
    const old = c.get(ref.name);
    if (old !== undefined && overwrite !== true) throw this.fail('exists', op, ref, 'blob already exists');
    if (old !== undefined && this.activeLease(old) !== undefined) throw this.fail('busy', op, ref, 'the blob is leased');
    c.set(ref.name, blob);
    this.staged.delete(key(ref));
    return blob.etag;
  }

  // --- BlobStore ------------------------------------------------------------------------

  async listContainers(): Promise<string[]> {
    await this.enter('listContainers');
    return [...this.containers.keys()].sort();
  }

  async checkContainer(container: string): Promise<void> {
    await this.enter('checkContainer');
    this.container('checkContainer', container);
  }

  async createContainer(container: string): Promise<void> {
    await this.enter('createContainer');
    if (this.containers.has(container)) throw this.fail('exists', 'createContainer', container, 'container already exists');
    this.containers.set(container, new Map());
  }

  async listDirectory(container: string, prefix: string): Promise<Listing> {
    await this.enter('listDirectory');
    const blobs: BlobInfo[] = [];
    const prefixes = new Set<string>();
    for (const [name, b] of [...this.container('listDirectory', container)].sort(([a], [z]) => (a < z ? -1 : 1))) {
      if (!name.startsWith(prefix)) continue;
      const slash = name.indexOf('/', prefix.length);
      if (slash >= 0) prefixes.add(name.slice(0, slash + 1));
      else blobs.push(this.info(name, b));
    }
    return { blobs, prefixes: [...prefixes] };
  }

  async getInfo(ref: BlobRef): Promise<BlobInfo> {
    await this.enter('getInfo');
    return this.info(ref.name, this.get('getInfo', ref));
  }

  async read(ref: BlobRef, offset: number, length: number, options: ReadOptions = {}): Promise<ReadBody> {
    await this.enter('read');
    if (length === 0) return (async function* empty() {})();
    const b = this.get('read', ref);
    if (options.etag !== undefined && options.etag !== b.etag) throw this.fail('stale', 'read', ref, 'the blob changed (ETag mismatch)');
    if (offset < 0 || length < 0 || offset >= b.size) throw this.fail('invalid', 'read', ref, `range ${offset}+${length} is outside the blob`);
    const data = this.bytes(b, offset, Math.min(b.size, offset + length));
    const chunk = this.settings.chunkSize ?? Math.max(1, data.length);
    const delay = this.settings.chunkDelayMs ?? 0;
    const stream = (async function* stream(): AsyncGenerator<Buffer> {
      for (let at = 0; at < data.length; at += chunk) {
        if (at > 0 && delay > 0) await sleep(delay);
        if (options.signal?.aborted === true) throw new BlobdiskError('unavailable', `read ${ref.container}/${ref.name} failed: aborted`);
        const piece = data.subarray(at, at + chunk);
        yield piece;
      }
    })();
    if (this.settings.direct !== true) return stream;
    const direct = directOf(stream, () => this.directPulls++);
    return { direct, [Symbol.asyncIterator]: () => stream };
  }

  async pageRanges(ref: BlobRef, start: number, end: number, options: ReadOptions = {}): Promise<ByteRange[]> {
    await this.enter('pageRanges');
    const b = this.get('pageRanges', ref, 'page');
    if (options.etag !== undefined && options.etag !== b.etag) throw this.fail('stale', 'pageRanges', ref, 'the blob changed (ETag mismatch)');
    if (end <= start) return [];
    const pages = [...b.pages.keys()].filter((p) => (p + 1) * PAGE_SIZE > start && p * PAGE_SIZE < end).sort((x, y) => x - y);
    const out: { start: number; end: number }[] = [];
    for (const p of pages) {
      const s = Math.max(start, p * PAGE_SIZE);
      const e = Math.min(end, (p + 1) * PAGE_SIZE);
      const last = out[out.length - 1];
      if (last !== undefined && last.end === s) last.end = e;
      else out.push({ start: s, end: e });
    }
    return out;
  }

  async blockList(ref: BlobRef): Promise<BlockInfo[]> {
    await this.enter('blockList');
    const b = this.get('blockList', ref, 'block');
    return b.blocks.filter((x) => x.id !== '').map((x) => ({ id: x.id, size: x.data.length }));
  }

  async createPageBlob(ref: BlobRef, size: number, options: { metadata?: Record<string, string>; overwrite?: boolean } = {}): Promise<string> {
    await this.enter('createPageBlob');
    checkSize('createPageBlob', ref, size);
    return this.create('createPageBlob', ref, this.newBlob('page', size, options.metadata), options.overwrite);
  }

  async createBlockBlob(ref: BlobRef, options: { metadata?: Record<string, string>; overwrite?: boolean } = {}): Promise<string> {
    await this.enter('createBlockBlob');
    return this.create('createBlockBlob', ref, this.newBlob('block', 0, options.metadata), options.overwrite);
  }

  async resizePageBlob(ref: BlobRef, size: number, conditions?: WriteConditions): Promise<string> {
    await this.enter('resizePageBlob');
    checkSize('resizePageBlob', ref, size);
    const b = this.get('resizePageBlob', ref, 'page');
    this.checkWrite('resizePageBlob', ref, b, conditions);
    for (const p of [...b.pages.keys()]) if (p * PAGE_SIZE >= size) b.pages.delete(p);
    b.size = size;
    return this.touch(b);
  }

  async putPages(ref: BlobRef, offset: number, data: Buffer, conditions?: WriteConditions): Promise<string> {
    await this.enter('putPages');
    checkAligned('putPages', ref, offset, data.length, MAX_PUT_PAGE_BYTES);
    const b = this.get('putPages', ref, 'page');
    if (offset + data.length > b.size) throw this.fail('invalid', 'putPages', ref, 'the range is beyond the end of the blob');
    this.checkWrite('putPages', ref, b, conditions);
    for (let at = 0; at < data.length; at += PAGE_SIZE) b.pages.set((offset + at) / PAGE_SIZE, Buffer.from(data.subarray(at, at + PAGE_SIZE)));
    return this.touch(b);
  }

  async clearPages(ref: BlobRef, offset: number, length: number, conditions?: WriteConditions): Promise<string> {
    await this.enter('clearPages');
    checkAligned('clearPages', ref, offset, length, Number.MAX_SAFE_INTEGER);
    const b = this.get('clearPages', ref, 'page');
    if (offset + length > b.size) throw this.fail('invalid', 'clearPages', ref, 'the range is beyond the end of the blob');
    this.checkWrite('clearPages', ref, b, conditions);
    for (let p = offset / PAGE_SIZE; p < (offset + length) / PAGE_SIZE; p++) b.pages.delete(p);
    return this.touch(b);
  }

  /** For tests: `ref` becomes a block blob holding `data` as one block (Put Block and Put Block List). */
  async putBlockBlob(ref: BlobRef, data: Buffer): Promise<string> {
    const id = Buffer.from(randomUUID()).toString('base64');
    await this.stageBlock(ref, id, data);
    return this.commitBlockList(ref, [id]);
  }

  async stageBlock(ref: BlobRef, blockId: string, data: Buffer, conditions?: WriteConditions): Promise<void> {
    await this.enter('stageBlock');
    const b = this.find('stageBlock', ref);
    if (b !== undefined && b.kind !== 'block') throw this.fail('invalid', 'stageBlock', ref, 'not a block blob');
    if (b !== undefined) this.checkWrite('stageBlock', ref, b, { ...(conditions?.leaseId !== undefined ? { leaseId: conditions.leaseId } : {}) });
    const staged = this.staged.get(key(ref)) ?? new Map<string, Buffer>();
    const other = [...staged.keys()][0] ?? b?.blocks.find((x) => x.id !== '')?.id;
    if (blockId === '' || (other !== undefined && other.length !== blockId.length)) throw this.fail('invalid', 'stageBlock', ref, 'block ids must be non-empty and of equal length');
    staged.set(blockId, Buffer.from(data));
    this.staged.set(key(ref), staged);
  }

  async commitBlockList(ref: BlobRef, blockIds: string[], options: WriteConditions & { metadata?: Record<string, string> } = {}): Promise<string> {
    await this.enter('commitBlockList');
    const c = this.container('commitBlockList', ref.container);
    const old = c.get(ref.name);
    if (old !== undefined && old.kind !== 'block') throw this.fail('invalid', 'commitBlockList', ref, 'not a block blob');
    if (old !== undefined) this.checkWrite('commitBlockList', ref, old, options);
    else if (options.ifMatch !== undefined) throw this.fail('stale', 'commitBlockList', ref, 'the blob does not exist (If-Match)');
    if (blockIds.length > MAX_COMMITTED_BLOCKS) throw this.fail('invalid', 'commitBlockList', ref, 'too many blocks');
    const staged = this.staged.get(key(ref)) ?? new Map<string, Buffer>();
    const blocks = blockIds.map((id) => {
      const data = staged.get(id) ?? old?.blocks.find((x) => x.id === id && id !== '')?.data;
      if (data === undefined) throw this.fail('invalid', 'commitBlockList', ref, 'the block list names an unknown block');
      return { id, data };
    });
    const b = old ?? this.newBlob('block', 0, undefined);
    b.blocks = blocks;
    b.size = blocks.reduce((n, x) => n + x.data.length, 0);
    if (options.metadata !== undefined) b.metadata = lower(options.metadata);
    c.set(ref.name, b);
    this.staged.delete(key(ref));
    return this.touch(b);
  }

  async setMetadata(ref: BlobRef, metadata: Record<string, string>, conditions?: WriteConditions): Promise<string> {
    await this.enter('setMetadata');
    const b = this.get('setMetadata', ref);
    this.checkWrite('setMetadata', ref, b, conditions);
    b.metadata = lower(metadata);
    return this.touch(b);
  }

  async deleteBlob(ref: BlobRef, conditions?: WriteConditions): Promise<void> {
    await this.enter('deleteBlob');
    const b = this.get('deleteBlob', ref);
    if (ref.snapshot !== undefined) {
      this.container('deleteBlob', ref.container).get(ref.name)?.snapshots?.delete(ref.snapshot);
      return;
    }
    this.checkWrite('deleteBlob', ref, b, conditions);
    this.container('deleteBlob', ref.container).delete(ref.name);
    this.staged.delete(key(ref));
  }

  async copyBlob(source: BlobRef, target: BlobRef): Promise<string> {
    await this.enter('copyBlob');
    const s = this.get('copyBlob', source);
    const t = this.find('copyBlob', target);
    if (t !== undefined && this.activeLease(t) !== undefined) throw this.fail('busy', 'copyBlob', target, 'the target is leased');
    const copy = this.newBlob(s.kind, s.size, s.metadata);
    copy.pages = new Map([...s.pages].map(([p, d]) => [p, Buffer.from(d)]));
    copy.blocks = s.blocks.map((x) => ({ id: x.id, data: Buffer.from(x.data) }));
    this.container('copyBlob', target.container).set(target.name, copy);
    return copy.etag;
  }

  async createSnapshot(ref: BlobRef, metadata?: Record<string, string>): Promise<string> {
    await this.enter('createSnapshot');
    const b = this.get('createSnapshot', ref);
    if (ref.snapshot !== undefined) throw this.fail('invalid', 'createSnapshot', ref, 'a snapshot is read-only');
    // Azure's ids are UTC times with 7 fraction digits; the sequence keeps them unique here.
    const id = new Date(this.now()).toISOString().replace(/Z$/, `${String(++this.seq % 10000).padStart(4, '0')}Z`);
    const snap: MemBlob = { ...b, pages: new Map(b.pages), blocks: b.blocks.map((x) => ({ ...x })), metadata: metadata !== undefined ? lower(metadata) : { ...b.metadata } };
    delete snap.lease;
    delete snap.snapshots;
    (b.snapshots ??= new Map()).set(id, snap);
    return id;
  }

  async listSnapshots(container: string, prefix: string, deep = false): Promise<SnapshotInfo[]> {
    await this.enter('listSnapshots');
    const out: SnapshotInfo[] = [];
    for (const [name, b] of [...this.container('listSnapshots', container)].sort(([a], [z]) => (a < z ? -1 : 1))) {
      if (!name.startsWith(prefix) || (!deep && name.includes('/', prefix.length))) continue;
      for (const [id, snap] of [...(b.snapshots ?? [])].sort(([x], [y]) => (x < y ? -1 : 1))) out.push({ ...this.info(name, snap), snapshot: id, leased: false });
    }
    return out;
  }

  async startCopy(source: BlobRef, target: BlobRef, metadata?: Record<string, string>): Promise<CopyStatus> {
    await this.enter('startCopy');
    const s = this.get('startCopy', source);
    const t = this.find('startCopy', target);
    if (target.snapshot !== undefined) throw this.fail('invalid', 'startCopy', target, 'a snapshot is read-only');
    if (t !== undefined && this.activeLease(t) !== undefined) throw this.fail('busy', 'startCopy', target, 'the target is leased');
    const copy = this.newBlob(s.kind, s.size, metadata ?? s.metadata);
    const pages = new Map([...s.pages].map(([p, d]) => [p, Buffer.from(d)]));
    const blocks = s.blocks.map((x) => ({ id: x.id, data: Buffer.from(x.data) }));
    const finish = (): void => {
      copy.pages = pages;
      copy.blocks = blocks;
      copy.copyStatus = 'success';
      this.touch(copy);
    };
    copy.copyStatus = 'pending';
    this.container('startCopy', target.container).set(target.name, copy);
    if (this.settings.copiesPending === true) this.pendingCopies.push(finish);
    else finish();
    return copy.copyStatus;
  }

  async pageRangesDiff(ref: BlobRef, since: string, start: number, end: number): Promise<PageDiff> {
    await this.enter('pageRangesDiff');
    const b = this.get('pageRangesDiff', ref, 'page');
    const old = this.get('pageRangesDiff', { ...ref, snapshot: since }, 'page');
    const inWindow = (p: number): boolean => (p + 1) * PAGE_SIZE > start && p * PAGE_SIZE < end;
    const changed = [...b.pages].filter(([p, d]) => inWindow(p) && old.pages.get(p) !== d).map(([p]) => p);
    const cleared = [...old.pages.keys()].filter((p) => inWindow(p) && !b.pages.has(p));
    const ranges = (pages: number[]): ByteRange[] => {
      const out: { start: number; end: number }[] = [];
      for (const p of pages.sort((x, y) => x - y)) {
        const s = Math.max(start, p * PAGE_SIZE);
        const e = Math.min(end, (p + 1) * PAGE_SIZE);
        const last = out[out.length - 1];
        if (last !== undefined && last.end === s) last.end = e;
        else out.push({ start: s, end: e });
      }
      return out;
    };
    return { changed: ranges(changed), cleared: ranges(cleared) };
  }

  async acquireLease(ref: BlobRef, durationSeconds: number, proposedLeaseId?: string, ifMatch?: string): Promise<string> {
    await this.enter('acquireLease');
    if (durationSeconds !== -1 && !(Number.isInteger(durationSeconds) && durationSeconds >= 15 && durationSeconds <= 60)) {
      throw this.fail('invalid', 'acquireLease', ref, `lease duration ${durationSeconds} is not -1 or 15..60 seconds`);
    }
    const b = this.get('acquireLease', ref);
    if (ifMatch !== undefined && ifMatch !== b.etag) throw this.fail('stale', 'acquireLease', ref, 'the ETag does not match');
    const active = this.activeLease(b);
    if (active !== undefined && active.id !== proposedLeaseId) throw this.fail('busy', 'acquireLease', ref, 'the blob is leased by someone else');
    const id = proposedLeaseId ?? randomUUID();
    b.lease = { id, expiresAt: durationSeconds === -1 ? Infinity : this.now() + durationSeconds * 1000 };
    return id;
  }

  async renewLease(ref: BlobRef, leaseId: string): Promise<void> {
    await this.enter('renewLease');
    const b = this.get('renewLease', ref);
    if (b.lease?.id !== leaseId) throw this.fail('busy', 'renewLease', ref, 'the lease id does not match');
    const active = this.activeLease(b);
    // As Azure: a lease that ran out is renewed only while nobody changed the blob since.
    if (active === undefined && (b.changedAt ?? 0) >= b.lease.expiresAt) throw this.fail('busy', 'renewLease', ref, 'the lease ran out and the blob changed since');
    // Infinite leases stay infinite; others restart their duration (tracked as 60 s here).
    if (active?.expiresAt !== Infinity) b.lease = { id: leaseId, expiresAt: this.now() + 60_000 };
  }

  async releaseLease(ref: BlobRef, leaseId: string): Promise<void> {
    await this.enter('releaseLease');
    const b = this.get('releaseLease', ref);
    if (b.lease?.id !== leaseId) throw this.fail('busy', 'releaseLease', ref, 'the lease id does not match');
    delete b.lease;
  }

  async breakLease(ref: BlobRef): Promise<void> {
    await this.enter('breakLease');
    delete this.get('breakLease', ref).lease;
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}

const key = (ref: BlobRef): string => `${ref.container}\u0000${ref.name}`;
const lower = (m: Record<string, string> | undefined): Record<string, string> => Object.fromEntries(Object.entries(m ?? {}).map(([k, v]) => [k.toLowerCase(), v]));

function checkSize(op: string, ref: BlobRef, size: number): void {
  if (!Number.isSafeInteger(size) || size < 0 || size % PAGE_SIZE !== 0 || size > MAX_PAGE_BLOB_BYTES) {
    throw new BlobdiskError('invalid', `${op} ${ref.container}/${ref.name} failed: page blob size ${size} is not a multiple of 512 up to 8 TiB`);
  }
}

function checkAligned(op: string, ref: BlobRef, offset: number, length: number, max: number): void {
  if (offset < 0 || offset % PAGE_SIZE !== 0 || length <= 0 || length % PAGE_SIZE !== 0 || length > max) {
    throw new BlobdiskError('invalid', `${op} ${ref.container}/${ref.name} failed: range ${offset}+${length} is not 512-aligned or exceeds ${max} bytes`);
  }
}

/** The pieces of `stream` pulled into the caller's buffers, progress told per piece. */
function directOf(stream: AsyncGenerator<Buffer>, counted: () => void): DirectRead {
  let piece: Buffer | undefined;
  let used = 0;
  return {
    async pull(into, at, want, progress) {
      counted();
      let got = 0;
      while (got < want) {
        if (piece === undefined || used === piece.length) {
          const next = await stream.next();
          if (next.done === true) break;
          piece = next.value;
          used = 0;
        }
        const n = Math.min(want - got, piece.length - used);
        piece.copy(into, at + got, used, used + n);
        used += n;
        got += n;
        progress?.(got);
      }
      return got;
    },
    cancel() {
      void stream.return(undefined);
    },
  };
}
