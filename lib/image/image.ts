/* One image: a blob seen as a file. Maps byte ranges to grains; the grain states live in
 * the cache (see lib/cache/cache.ts). A read of a grain is served, in order, from the
 * cache file when it holds the sectors, from a fetch already under way (single flight;
 * released as soon as the requested bytes arrived), as zeros when Azure holds nothing
 * there (no pages, or past the blob's end), or by a new ranged GET.
 *
 * Writes go to the cache file and mark sectors dirty; they return once the grain map has
 * committed that. A write that covers a sector only partly first takes the rest of that
 * sector from the cache, the fetch, or zeros. The flusher uploads later (lib/flusher).
 * Sizes are ours: `size` runs ahead of Azure's while a change waits for upload, and
 * `remoteEnd` says how much of the blob in Azure still belongs to the image after a
 * shrink (the rest reads as zeros until the flusher has cut it).
 *
 * Sequential reading widens a read-ahead window up to `readAheadGrains`; adjacent missing
 * grains share one GET of at most `maxFetchBytes`; read-ahead never takes more than
 * `fetchConcurrency` GETs. */

import { GrainCache } from '../cache/cache';
import { SECTOR } from '../cache/sectors';
import { BlobdiskError, isBlobdiskError } from '../errors';
import { GrainMap, ImageRow } from '../grainmap/grainmap';
import { Logger } from '../log';
import { ImageCounters, newImageCounters } from '../metrics';
import { ReadOptions, SyncMode } from '../options';
import { BlobInfo, BlobRef, BlobStore, MAX_PAGE_BLOB_BYTES, WriteConditions } from '../store/types';
import { PageMap } from './pagemap';
import { PendingGrain } from './pending';
import { BufferPool } from './pool';

/** Metadata key holding a page blob's logical size when it is not a multiple of 512. */
export const LOGICAL_SIZE_KEY = 'blobdisk_size';

/** Page ranges are listed in windows of this many grains. */
const PAGE_WINDOW_GRAINS = 256;
/** How far a read may start from where the last one ended and still count as sequential. */
const SEQUENTIAL_SLACK = 1024 * 1024;
/** Leases last this long and are renewed at a third of it. */
const LEASE_SECONDS = 60;

/** The size a reader sees: the page blob's logical size from metadata when it is valid, else the blob's. */
export function logicalSize(info: BlobInfo): number {
  const text = info.metadata[LOGICAL_SIZE_KEY];
  if (info.kind === 'page' && text !== undefined && /^\d+$/.test(text)) {
    const n = Number(text);
    if (n <= info.size && n > info.size - 512) return n;
  }
  return info.size;
}

/** Ranged GETs in flight across the whole mount; read-ahead waits its turn, demand reads do not. */
export class FetchBudget {
  inFlight = 0;
  constructor(readonly limit: number) {}
  get available(): boolean {
    return this.inFlight < this.limit;
  }
}

export interface ImageDeps {
  readonly store: BlobStore;
  readonly cache: GrainCache;
  readonly map: GrainMap;
  readonly log: Logger;
  readonly grainSize: number;
  readonly read: ReadOptions;
  readonly budget: FetchBudget;
  /** How long a write waits for room when the cache is full of dirty data. */
  readonly dirtyWaitMs: number;
  /** The lease id this cache directory proposes (stable, so a crashed mount's leases come back). */
  readonly leaseId: string;
  /** Told whenever the image gets something to upload. */
  readonly onDirty: (image: Image) => void;
  readonly sync: SyncMode;
  /** Uploads everything dirty in the image now (fsync with --sync cloud). */
  readonly flushNow: (image: Image) => Promise<void>;
  /** Runs `fn` while no upload of the image is under way or may start (a rename). */
  readonly exclusive: <T>(image: Image, fn: () => Promise<T>) => Promise<T>;
}

/** A cached grain got ready ahead of a sequential reader by GrainCache.prefetch() (its
 *  checksum checked, its file open and in the page cache); `warm` once readNow() may serve it. */
interface Staged {
  readonly epoch: number;
  readonly prefetched: Promise<void>;
  warm: boolean;
}

export class Image {
  readonly counters: ImageCounters = newImageCounters();
  private row: ImageRow;
  private info: BlobInfo;
  private localSize: number;
  private pageMap: PageMap | undefined;
  private readonly pending = new Map<number, PendingGrain>();
  /** Cached grains got ready ahead of a sequential reader (a read-ahead of the cache
   *  directory, see Staged). Dropped behind the reader, on any write to the grain, and on a
   *  new epoch. */
  private readonly staged = new Map<number, Staged>();
  /** Grain buffers of fetches, reused (see pool.ts). */
  private readonly buffers: BufferPool;
  private readonly locks = new Map<number, Promise<void>>();
  /** Fetches under way, so that closing waits until their grains are in the cache. */
  private readonly fetching = new Set<Promise<void>>();
  /** Bumped when sizes or the remote change: fetches started before must not fill the cache. */
  private epoch = 0;
  private lastEnd = -1;
  private streak = 0;
  /** Where the last write ended: a write starting there continues a sequential writer. */
  private lastWriteEnd = -1;
  private leaseTimer: NodeJS.Timeout | undefined;
  private leaseTaking: Promise<void> | undefined;
  leaseId: string | undefined;
  /** Truncates so far: the flusher reads it with the size it makes Azure's. */
  cuts = 0;
  /** Shrinking truncates not yet reported back by a flush that began after them: what
   *  Azure holds past their sizes no longer belongs to the image. */
  private shrinks: { cuts: number; size: number }[] = [];
  /** When `info` was last known to be what Azure holds (Date.now()): a description of the
   *  blob asked for before then is older than `info`. */
  knownAt = Date.now();
  /** Set when the blob changed in Azure while we hold data not yet uploaded: nothing is overwritten. */
  conflict: string | undefined;
  mtime: Date;

  private where: BlobRef;

  private constructor(
    private readonly deps: ImageDeps,
    ref: BlobRef,
    row: ImageRow,
    info: BlobInfo,
  ) {
    this.where = ref;
    this.row = row;
    this.info = info;
    this.localSize = row.size;
    this.mtime = info.lastModified;
    // Enough for the grains of a full read-ahead window in flight, at most 64 MiB.
    const g = deps.grainSize;
    const window = deps.read.readAheadGrains + Math.ceil(deps.read.maxFetchBytes / g) + 2;
    this.buffers = new BufferPool(g, Math.max(2, Math.min(window, Math.floor((64 * 1024 * 1024) / g))));
  }

  /** The image of `ref` as Azure described it in `info`; drops cached grains of an older ETag. */
  static async open(deps: ImageDeps, account: string, ref: BlobRef, info: BlobInfo): Promise<Image> {
    const row = deps.map.ensureImage(account, ref.container, ref.name, info.kind, logicalSize(info));
    await deps.cache.clipPast(row.id, row.size);
    const image = new Image(deps, ref, row, info);
    await image.revalidate(info);
    return image;
  }

  get id(): number {
    return this.row.id;
  }
  /** The blob behind the image (it changes when the file is renamed). */
  get ref(): BlobRef {
    return this.where;
  }
  get size(): number {
    return this.localSize;
  }
  get kind(): BlobInfo['kind'] {
    return this.info.kind;
  }
  get etag(): string {
    return this.info.etag;
  }
  /** What we last knew of the blob in Azure. */
  get remote(): BlobInfo {
    return this.info;
  }
  /** Bytes of the blob in Azure that still belong to the image. */
  get remoteEnd(): number {
    return Math.min(this.info.size, this.row.remoteEnd ?? Number.MAX_SAFE_INTEGER);
  }

  private get dirty(): boolean {
    return this.deps.cache.dirtyGrains(this.row.id).length > 0 || this.localSize !== logicalSize(this.info) || this.row.remoteEnd !== null;
  }

  /** Adopts what Azure now says of the blob. A different ETag than the cached grains were
   *  read under means the blob changed elsewhere: clean grains are dropped; with data not
   *  yet uploaded that is a conflict. While we hold the lease, changes are our own. */
  async revalidate(info: BlobInfo): Promise<void> {
    this.knownAt = Date.now();
    const changed = this.row.etag !== info.etag && !this.deps.map.isOurEtag(this.row.id, info.etag);
    // Under our lease every change is ours, and the flusher keeps `info` current; a listing
    // or a HEAD that raced with an upload could only be older.
    if (this.leaseId !== undefined) return;
    if (!changed) {
      this.info = info;
      if (this.row.etag !== info.etag) this.setRow({ etag: info.etag }); // one of our own uploads
      return;
    }
    if (this.row.etag !== null && this.dirty) {
      // After a crash, uploads that were under way changed the ETag without our noting it.
      // If the blob is still leased, and to our lease id, nobody else can have written it.
      if (info.leased === true && (await this.takeLease().then(() => true, () => false))) {
        this.info = info;
        this.setRow({ etag: info.etag });
        return;
      }
      this.conflict = `${this.ref.container}/${this.ref.name} changed in Azure while this cache holds changes not yet uploaded; nothing was overwritten`;
      this.deps.log.error(this.conflict);
      return;
    }
    this.info = info;
    this.epoch++;
    this.staged.clear();
    if (this.row.etag !== null) {
      const dropped = await this.deps.cache.dropClean(this.row.id);
      if (dropped > 0) this.deps.log.info(`${this.ref.container}/${this.ref.name} changed in Azure; dropped ${dropped} cached grains`);
    }
    this.localSize = logicalSize(info);
    this.setRow({ etag: info.etag, kind: info.kind, size: this.localSize, remoteEnd: null });
    this.pageMap?.reset(info.etag, info.size);
  }

  /** The image now lives in `dest`, a server-side copy of its blob that Azure describes as
   *  `info`: the same bytes, so cached and dirty grains stay and the grain map row follows.
   *  Returns what deleting the old blob needs (our lease on it, if we held one); the lease
   *  is not renewed any more, takeLease() takes one on `dest`. */
  movedTo(dest: BlobRef, info: BlobInfo): WriteConditions {
    const old = this.writeConditions();
    this.dropLease();
    this.where = dest;
    this.deps.map.renameImage(this.row.id, dest.container, dest.name);
    this.row = { ...this.row, container: dest.container, name: dest.name };
    this.info = info;
    this.knownAt = Date.now();
    this.setRow({ etag: info.etag });
    this.pageMap = undefined;
    return old;
  }

  /** Resolves when the fetches under way (possibly from the blob's old name) are done. */
  async settled(): Promise<void> {
    await Promise.all(this.fetching);
  }

  /** Another blob replaced this one (a rename onto its name): what the cache holds of it
   *  goes, and handles still open on it fail from now on. */
  async forget(): Promise<void> {
    this.dropLease();
    this.epoch++;
    this.conflict = `${this.ref.container}/${this.ref.name} was replaced by a rename`;
    await this.deps.cache.dropImage(this.row.id);
    this.deps.map.deleteImage(this.row.id);
  }

  private setRow(fields: Partial<Pick<ImageRow, 'etag' | 'kind' | 'size' | 'allocated' | 'allocatedEtag' | 'remoteEnd'>>): void {
    this.deps.map.updateImage(this.row.id, fields);
    this.row = { ...this.row, ...fields };
  }

  /** Asks Azure for the blob's properties again and revalidates. ENOENT when it is gone. */
  async refresh(): Promise<void> {
    await this.revalidate(await this.deps.store.getInfo(this.ref));
  }

  /** The flusher's report of an ETag one of its requests produced. */
  produced(etag: string): void {
    this.deps.map.recordEtag(this.row.id, etag);
  }

  /** The flusher's report of what Azure holds now (after an upload, a resize, a commit).
   *  With `cuts` (the count read together with the size the flush made Azure's), Azure
   *  holds the whole image as it was then: only a shrink since cuts into it. The old cut
   *  must not stay: grains the flush marked clean past it would read as zeros once evicted,
   *  and the next flush would cut or restage them from those zeros. Without `cuts`, the
   *  end of what belongs to the image stays as it is. */
  uploaded(info: BlobInfo, cuts?: number): void {
    this.info = info;
    this.knownAt = Date.now();
    if (cuts === undefined) {
      this.setRow({ etag: info.etag });
    } else {
      // Flushes of one image run one at a time: older shrinks are settled by this one.
      this.shrinks = this.shrinks.filter((s) => s.cuts > cuts);
      const floor = Math.min(...this.shrinks.map((s) => s.size));
      this.setRow({ etag: info.etag, remoteEnd: Number.isFinite(floor) ? floor : null });
    }
    this.pageMap?.reset(info.etag, info.size);
  }

  /** The flusher's report that one of its Put Page / Clear Pages calls changed [start, end). */
  pagesChanged(start: number, end: number): void {
    this.pageMap?.changed(start, end);
  }

  private pages(): PageMap {
    if (!this.pageMap) {
      this.pageMap = new PageMap(this.deps.store, this.ref, PAGE_WINDOW_GRAINS * this.deps.grainSize, this.info.etag, this.info.size, () => this.leaseId === undefined);
    }
    return this.pageMap;
  }

  /** Bytes holding data, for st_blocks: page blobs count allocated pages (remembered per
   *  ETag) plus what waits for upload; block blobs their size. */
  async allocatedBytes(): Promise<number> {
    try {
      return await this.allocatedOnce();
    } catch (e) {
      if (!isBlobdiskError(e) || e.code !== 'ESTALE') throw e;
      await this.refresh();
      return this.allocatedOnce();
    }
  }

  private async allocatedOnce(): Promise<number> {
    if (this.info.kind !== 'page') return this.size;
    const pendingBytes = this.deps.cache.dirtyOf(this.row.id).bytes;
    if (this.row.allocatedEtag === this.info.etag && this.row.allocated !== null) return Math.min(this.size, this.row.allocated + pendingBytes);
    const etag = this.info.etag;
    let allocated: number;
    try {
      allocated = await this.pages().allocatedBytes();
    } catch (e) {
      // st_blocks is advisory: with Azure unreachable, stat (and so every open) answers from
      // what this mount last knew instead of failing with EIO.
      if (!isBlobdiskError(e) || e.code !== 'EIO') throw e;
      return Math.min(this.size, Math.max(this.row.allocated ?? 0, this.cachedBytes()) + pendingBytes);
    }
    if (this.info.etag === etag) this.setRow({ allocated, allocatedEtag: etag });
    return Math.min(this.size, allocated + pendingBytes);
  }

  // ---- leases ------------------------------------------------------------------------

  /** Takes the blob's lease (once); EBUSY when another host holds it. */
  takeLease(): Promise<void> {
    if (this.leaseId !== undefined) return Promise.resolve();
    this.leaseTaking ??= (async () => {
      try {
        const id = await this.deps.store.acquireLease(this.ref, LEASE_SECONDS, this.deps.leaseId);
        this.leaseId = id;
        this.leaseTimer = setInterval(() => void this.renewLease(), (LEASE_SECONDS * 1000) / 3);
        this.leaseTimer.unref();
      } catch (e) {
        if (isBlobdiskError(e) && e.code === 'EBUSY') {
          throw new BlobdiskError('EBUSY', `${this.ref.container}/${this.ref.name} is leased by another writer; it can only be read here`, { cause: e });
        }
        throw e;
      } finally {
        this.leaseTaking = undefined;
      }
    })();
    return this.leaseTaking;
  }

  private async renewLease(): Promise<void> {
    const id = this.leaseId;
    if (id === undefined) return;
    try {
      await this.deps.store.renewLease(this.ref, id);
    } catch (e) {
      if (isBlobdiskError(e) && (e.code === 'EBUSY' || e.code === 'ENOENT')) {
        this.conflict = `lost the lease on ${this.ref.container}/${this.ref.name} (${e.code}); another writer may have taken the blob`;
        this.deps.log.error(this.conflict);
        this.dropLease();
      } else {
        this.deps.log.warn(`renewing the lease on ${this.ref.name} failed (${isBlobdiskError(e) ? e.code : 'error'}); trying again`);
      }
    }
  }

  private dropLease(): void {
    if (this.leaseTimer) clearInterval(this.leaseTimer);
    this.leaseTimer = undefined;
    this.leaseId = undefined;
  }

  /** Releases the lease (at unmount, after draining). */
  async releaseLease(): Promise<void> {
    const id = this.leaseId;
    if (id === undefined) return;
    this.dropLease();
    try {
      await this.deps.store.releaseLease(this.ref, id);
      // Azure's ETag is unchanged by a release; remember it so the next mount trusts the cache.
      this.setRow({ etag: this.info.etag });
    } catch (e) {
      this.deps.log.warn(`releasing the lease on ${this.ref.name} failed (${isBlobdiskError(e) ? e.code : 'error'}); it expires by itself within ${LEASE_SECONDS} s`);
    }
  }

  /** Conditions every write to Azure carries. */
  writeConditions(): WriteConditions {
    return this.leaseId !== undefined ? { leaseId: this.leaseId } : {};
  }

  // ---- reads -------------------------------------------------------------------------

  /** Reads `length` bytes at `offset` into `target` (from its start). Returns the bytes
   *  read: fewer at the end of the image, 0 past it. Never-written ranges read as zeros.
   *  Rejects only with BlobdiskError: ENOENT if the blob vanished, EIO after retries. */
  async readInto(target: Buffer, offset: number, length: number): Promise<number> {
    try {
      return await this.readOnce(target, offset, length);
    } catch (e) {
      if (!isBlobdiskError(e) || e.code !== 'ESTALE') throw e;
      // The blob changed under us: take its new state and read once more.
      await this.refresh();
      return this.readOnce(target, offset, length);
    }
  }

  /** Reads `length` bytes at `offset` of the image (see readInto). */
  async read(offset: number, length: number): Promise<Buffer> {
    const buf = Buffer.alloc(length);
    const n = await this.readInto(buf, offset, length);
    return buf.subarray(0, n);
  }

  /** The image's current bytes for an upload: like read(), without counting as a reader. */
  async readForUpload(offset: number, length: number): Promise<Buffer> {
    const buf = Buffer.alloc(length);
    const n = await this.readOnce(buf, offset, length, false);
    return buf.subarray(0, n);
  }

  /** Serves a read at once when every grain it touches is staged and warm (a sequential
   *  reader of cached grains): the bytes read, as readInto() counts them, or undefined when
   *  the read needs readInto(). Saves the FUSE request its turns through promises. */
  readNow(target: Buffer, offset: number, length: number): number | undefined {
    const end = Math.min(offset + length, this.size);
    if (offset >= end) return undefined;
    const g = this.deps.grainSize;
    const last = Math.floor((end - 1) / g);
    for (let idx = Math.floor(offset / g); idx <= last; idx++) {
      const staged = this.staged.get(idx);
      if (staged?.warm !== true || staged.epoch !== this.epoch) return undefined;
    }
    for (let idx = Math.floor(offset / g); idx <= last; idx++) {
      const from = Math.max(offset, idx * g);
      const to = Math.min(end, (idx + 1) * g);
      // Rare: the grain left the cache after it was staged; readInto() takes it from here.
      if (!this.copyStaged(idx, from - idx * g, to - idx * g, target, from - offset)) return undefined;
    }
    this.noteReader(offset, end);
    if (this.streak > 0) this.readAhead(end);
    this.counters.bytesRead += end - offset;
    return end - offset;
  }

  /** The kernel sends a sequential reader's requests a few at a time, and they may arrive
   *  out of order: a read starting near where the last one ended continues the streak. */
  private noteReader(offset: number, end: number): void {
    const near = this.lastEnd >= 0 && Math.abs(offset - this.lastEnd) <= SEQUENTIAL_SLACK;
    this.streak = near ? this.streak + (end - offset) : 0;
    this.lastEnd = near ? Math.max(this.lastEnd, end) : end;
  }

  private async readOnce(target: Buffer, offset: number, length: number, reader = true): Promise<number> {
    const end = Math.min(offset + length, this.size);
    if (offset >= end) return 0;
    if (reader) this.noteReader(offset, end);
    const g = this.deps.grainSize;
    const parts: Promise<void>[] = [];
    for (let idx = Math.floor(offset / g); idx * g < end; idx++) {
      const from = Math.max(offset, idx * g);
      const to = Math.min(end, (idx + 1) * g);
      // A staged grain answers without a turn through promises.
      if (!this.copyStaged(idx, from - idx * g, to - idx * g, target, from - offset)) {
        parts.push(this.readGrain(idx, from - idx * g, to - idx * g, target, from - offset));
      }
    }
    if (reader && this.streak > 0) this.readAhead(end);
    if (parts.length > 0) await Promise.all(parts);
    if (reader) this.counters.bytesRead += end - offset;
    return end - offset;
  }

  /** Whether Azure holds data for [start, end) of the image (false: it reads as zeros). */
  private async remoteHas(start: number, end: number): Promise<boolean> {
    const stop = Math.min(end, this.remoteEnd);
    if (stop <= start) return false;
    if (this.info.kind !== 'page') return true;
    return (await this.pages().ranges(start, stop)).length > 0;
  }

  /** Copies [start, end) of grain `idx` into target at `at` when it is staged and warm;
   *  false otherwise. */
  private copyStaged(idx: number, start: number, end: number, target: Buffer, at: number): boolean {
    const staged = this.staged.get(idx);
    if (staged?.warm !== true || staged.epoch !== this.epoch) return false;
    const cache = this.deps.cache;
    if (!cache.covers(this.row.id, idx, start, end) || !cache.readNow(this.row.id, idx, start, end - start, target, at)) return false;
    this.counters.hits++;
    return true;
  }

  /** Copies [start, end) of grain `idx` into target at `at`. */
  private async readGrain(idx: number, start: number, end: number, target: Buffer, at: number): Promise<void> {
    const cache = this.deps.cache;
    const g = this.deps.grainSize;
    const staged = this.staged.get(idx);
    if (staged && staged.epoch === this.epoch) {
      await staged.prefetched;
      if (this.copyStaged(idx, start, end, target, at)) return;
    }
    for (let attempt = 0; attempt < 4; attempt++) {
      if (cache.covers(this.row.id, idx, start, end)) {
        if (await cache.read(this.row.id, idx, start, end - start, target, at)) {
          this.counters.hits++;
          return;
        }
        continue;
      }
      let p = this.pending.get(idx);
      if (!p) {
        if (!(await this.remoteHas(idx * g, (idx + 1) * g))) {
          if (!cache.has(this.row.id, idx)) {
            target.fill(0, at, at + end - start);
            this.counters.zeroReads++;
            return;
          }
          // Part of the grain is local, the rest is zeros in Azure: complete it with zeros.
          const epoch = this.epoch;
          await this.withGrainLock(idx, () => cache.fill(this.row.id, idx, Buffer.alloc(g), () => epoch === this.epoch));
          continue;
        }
        p = this.pending.get(idx) ?? this.startFetch(idx, this.runAfter(idx), false);
        this.counters.misses++;
      }
      if (cache.has(this.row.id, idx)) {
        // Local sectors win over fetched ones: read the merged grain from the cache.
        await p.finished;
        continue;
      }
      await p.copyTo(start, end, target, at);
      return;
    }
    throw new BlobdiskError('EIO', `grain ${idx} of ${this.ref.name} kept leaving the cache while being read`);
  }

  /** Grains worth fetching together with `idx` on a demand miss: the following missing
   *  ones, while the reader is sequential, up to maxFetchBytes. */
  private runAfter(idx: number): number {
    if (this.streak === 0) return 1;
    const max = Math.max(1, Math.floor(this.deps.read.maxFetchBytes / this.deps.grainSize));
    let count = 1;
    while (count < max && this.fetchable(idx + count) === 'yes') count++;
    return count;
  }

  /** Whether grain `idx` needs a GET: 'no' (cached, under way, past the end or known
   *  zeros), 'yes', or 'unknown' (its page ranges are not listed yet). */
  private fetchable(idx: number): 'yes' | 'no' | 'unknown' {
    const g = this.deps.grainSize;
    const start = idx * g;
    const stop = Math.min(start + g, this.remoteEnd, this.size);
    if (stop <= start || this.pending.has(idx) || this.deps.cache.has(this.row.id, idx)) return 'no';
    if (this.info.kind !== 'page') return 'yes';
    const ranges = this.pages().known(start, stop);
    if (!ranges) return 'unknown';
    return ranges.length > 0 ? 'yes' : 'no';
  }

  private readAhead(end: number): void {
    const g = this.deps.grainSize;
    const window = Math.min(this.deps.read.readAheadGrains, Math.max(2, 2 * Math.ceil(this.streak / g)));
    if (window === 0) return;
    const first = Math.floor(end / g);
    const limit = first + window;
    // One GET per maxFetchBytes: a GET costs far more CPU (here and in the server) than the
    // bytes it carries, so the moving edge of the window waits until a whole run is missing.
    const batch = Math.min(window, Math.max(1, Math.floor(this.deps.read.maxFetchBytes / g)));
    const lastGrain = Math.ceil(Math.min(this.size, this.remoteEnd) / g);
    for (const idx of this.staged.keys()) if (idx < first - 1) this.staged.delete(idx);
    let idx = first;
    while (idx < limit) {
      if (this.stage(idx)) {
        idx++;
        continue;
      }
      if (!this.deps.budget.available) return;
      const state = this.fetchable(idx);
      if (state === 'unknown') {
        // List this window's page ranges now; the next sequential read continues from here.
        this.pages().ranges(idx * g, (idx + 1) * g).catch(() => undefined);
        return;
      }
      if (state === 'no') {
        idx++;
        continue;
      }
      let count = 1;
      while (count < batch && idx + count < limit && this.fetchable(idx + count) === 'yes') count++;
      if (count < batch && idx + count === limit && limit < lastGrain && idx > first) return;
      this.startFetch(idx, count, true);
      idx += count;
    }
  }

  /** Gets cached grain `idx` ready for a sequential reader (see Staged); false when the
   *  cache does not hold all of it. */
  private stage(idx: number): boolean {
    if (this.staged.has(idx)) return true;
    const g = this.deps.grainSize;
    if (this.locks.has(idx) || idx * g >= this.size || !this.deps.cache.covers(this.row.id, idx, 0, Math.min(g, this.size - idx * g))) return false;
    const staged: Staged = {
      epoch: this.epoch,
      warm: false,
      prefetched: this.deps.cache.prefetch(this.row.id, idx).then(
        (ok) => {
          if (ok && this.staged.get(idx) === staged) staged.warm = true;
        },
        () => undefined,
      ),
    };
    this.staged.set(idx, staged);
    // Bounded: a reader that jumped around leaves stale grains behind; the oldest go first.
    while (this.staged.size > 2 * this.deps.read.readAheadGrains + 2) {
      const oldest = this.staged.keys().next().value;
      if (oldest === undefined) break;
      this.staged.delete(oldest);
    }
    return true;
  }

  /** Starts one ranged GET for grains [first, first + count) and returns the first's pending state. */
  private startFetch(first: number, count: number, readAhead: boolean): PendingGrain {
    const g = this.deps.grainSize;
    let start = first * g;
    let end = Math.min(this.remoteEnd, (first + count) * g);
    if (this.info.kind === 'page') {
      // Fetch from the first to the last allocated byte; the rest of the run is zeros.
      const ranges = this.pages().known(start, end);
      const firstRange = ranges?.[0];
      const lastRange = ranges?.[ranges.length - 1];
      if (firstRange && lastRange) {
        start = firstRange.start;
        end = lastRange.end;
      }
    }
    const grains: PendingGrain[] = [];
    for (let idx = first; idx < first + count; idx++) {
      const base = idx * g;
      const from = Math.min(g, Math.max(0, start - base));
      const to = Math.max(from, Math.min(g, end - base));
      const p = new PendingGrain(idx, this.buffers.take(), from, to);
      this.pending.set(idx, p);
      grains.push(p);
    }
    this.counters.fetches++;
    if (readAhead) this.counters.readAheadFetches++;
    this.deps.budget.inFlight++;
    const fetching = this.runFetch(grains, start, end).finally(() => {
      this.deps.budget.inFlight--;
      this.fetching.delete(fetching);
      for (const p of grains) {
        // Only grains that left the pending table: a reader may still find the others.
        const buf = this.pending.get(p.idx) === p ? undefined : p.recycle();
        if (buf) this.buffers.give(buf);
      }
    });
    this.fetching.add(fetching);
    const head = grains[0];
    if (!head) throw new BlobdiskError('EIO', 'empty fetch');
    return head;
  }

  private async runFetch(grains: PendingGrain[], start: number, end: number): Promise<void> {
    const g = this.deps.grainSize;
    const epoch = this.epoch;
    try {
      if (end > start) {
        // Under our lease every change is ours and only touches sectors the cache holds.
        const options = this.leaseId === undefined ? { etag: this.info.etag } : {};
        const stream = await this.deps.store.read(this.ref, start, end - start, options);
        let pos = start;
        for await (const chunk of stream) {
          let used = 0;
          while (used < chunk.length) {
            const p = grains[Math.floor(pos / g) - (grains[0]?.idx ?? 0)];
            const take = p ? Math.min(chunk.length - used, p.idx * g + p.to - pos) : 0;
            if (!p || take <= 0 || pos >= end) throw new BlobdiskError('EIO', `Azure sent more bytes than asked for ${this.ref.name}`);
            p.append(chunk, used, used + take);
            used += take;
            pos += take;
          }
          this.counters.bytesDown += chunk.length;
        }
        if (pos !== end) throw new BlobdiskError('EIO', `Azure ended the read of ${this.ref.name} at ${pos} instead of ${end}`);
      }
      for (const p of grains) p.complete();
      for (const p of grains) {
        try {
          // Checked under the grain lock, and again by the cache just before it keeps the
          // grain: a truncate or a change of the blob meanwhile makes these bytes stale.
          const valid = (): boolean => epoch === this.epoch;
          await this.withGrainLock(p.idx, async () => (valid() ? this.deps.cache.fill(this.row.id, p.idx, p.data, valid, p.checksum) : false));
        } catch (e) {
          this.deps.log.warn(`could not cache grain ${p.idx} of ${this.ref.name}: ${(e as Error).message}`);
        } finally {
          if (this.pending.get(p.idx) === p) this.pending.delete(p.idx);
          p.stored();
        }
      }
    } catch (e) {
      const error = isBlobdiskError(e) ? e : new BlobdiskError('EIO', `reading ${this.ref.name} failed: ${(e as Error).message}`, { cause: e });
      for (const p of grains) {
        p.fail(error);
        if (this.pending.get(p.idx) === p) this.pending.delete(p.idx);
      }
    }
  }

  // ---- writes ------------------------------------------------------------------------

  /** Runs `fn` alone among the writes and fills of grain `idx`. */
  private async withGrainLock<T>(idx: number, fn: () => Promise<T>): Promise<T> {
    const before = this.locks.get(idx) ?? Promise.resolve();
    let release: () => void = () => undefined;
    const mine = new Promise<void>((r) => (release = r));
    const chained = before.then(() => mine);
    this.locks.set(idx, chained);
    await before;
    try {
      return await fn();
    } finally {
      release();
      if (this.locks.get(idx) === chained) this.locks.delete(idx);
    }
  }

  private checkWritable(end: number): void {
    if (this.conflict) throw new BlobdiskError('EIO', this.conflict);
    if (this.info.kind === 'append') throw new BlobdiskError('EROFS', `${this.ref.name} is an append blob; blobdisk only reads those`);
    if (this.info.kind === 'page' && end > MAX_PAGE_BLOB_BYTES) {
      throw new BlobdiskError('EFBIG', `page blobs end at 8 TiB; ${this.ref.name} cannot grow to ${end} bytes`);
    }
  }

  /** Writes `data` at `offset`, growing the image when it ends past it. Resolves once the
   *  bytes are in the cache and the grain map has recorded them (not yet in Azure).
   *  EIO on a conflict, EFBIG past the page-blob limit, ENOSPC when the cache stays full
   *  of data not yet uploaded. */
  async write(data: Buffer, offset: number): Promise<number> {
    const now = this.writeNow(data, offset);
    if (now !== undefined) return now;
    const end = offset + data.length;
    const g = this.deps.grainSize;
    const parts: Promise<void>[] = [];
    for (let idx = Math.floor(offset / g); idx * g < end; idx++) {
      const from = Math.max(offset, idx * g);
      const to = Math.min(end, (idx + 1) * g);
      parts.push(this.writeGrain(idx, from - idx * g, data.subarray(from - offset, to - offset)));
    }
    await Promise.all(parts);
    this.written(offset, end);
    return data.length;
  }

  /** The common case of write(), done at once: whole sectors within one grain that is
   *  cached, its file open, and that no other write or fill holds (nothing can come
   *  between, so it needs no lock). The bytes written, or undefined when the write needs
   *  write(). Throws what write() rejects with. */
  writeNow(data: Buffer, offset: number): number | undefined {
    const end = offset + data.length;
    this.checkWritable(end);
    if (data.length === 0) return 0;
    const g = this.deps.grainSize;
    const first = Math.floor(offset / g);
    const now =
      offset % SECTOR === 0 && end % SECTOR === 0 && end <= (first + 1) * g && !this.locks.has(first) &&
      this.deps.cache.writeNow(this.row.id, first, offset - first * g, data);
    if (!now) return undefined;
    this.staged.delete(first);
    this.written(offset, end);
    return data.length;
  }

  /** After a write landed: the image's size, times and the flusher's turn; a sequential
   *  writer past the middle of a grain gets the next grain's file opened ahead. */
  private written(offset: number, end: number): void {
    const g = this.deps.grainSize;
    const last = Math.floor((end - 1) / g);
    if (offset === this.lastWriteEnd && end - last * g >= g / 2) this.deps.cache.prepare(this.row.id, last + 1);
    this.lastWriteEnd = end;
    if (end > this.localSize) {
      this.localSize = end;
      this.setRow({ size: end });
    }
    this.mtime = new Date();
    this.deps.onDirty(this);
  }

  /** Writes `chunk` at `start` within grain `idx`, widened to whole sectors. */
  private async writeGrain(idx: number, start: number, chunk: Buffer): Promise<void> {
    const g = this.deps.grainSize;
    const end = start + chunk.length;
    const alignedStart = Math.floor(start / SECTOR) * SECTOR;
    const alignedEnd = Math.min(g, Math.ceil(end / SECTOR) * SECTOR);
    // A staged grain is dropped for a write (it is staged again by the next sequential read);
    // one staged while the write runs is dropped after.
    this.staged.delete(idx);
    await this.withGrainLock(idx, async () => {
      let data = chunk;
      if (alignedStart !== start || alignedEnd !== end) {
        data = Buffer.alloc(alignedEnd - alignedStart);
        if (alignedStart !== start) await this.currentSector(idx, alignedStart, data, 0);
        if (alignedEnd !== end && (alignedEnd - SECTOR !== alignedStart || alignedStart === start)) {
          await this.currentSector(idx, alignedEnd - SECTOR, data, data.length - SECTOR);
        }
        chunk.copy(data, start - alignedStart);
      }
      await this.deps.cache.write(this.row.id, idx, alignedStart, data, this.deps.dirtyWaitMs);
    });
    this.staged.delete(idx);
  }

  /** The sector at `start` of grain `idx` as it reads now, into `target` at `at` (under the grain lock). */
  private async currentSector(idx: number, start: number, target: Buffer, at: number): Promise<void> {
    const cache = this.deps.cache;
    const g = this.deps.grainSize;
    if (cache.covers(this.row.id, idx, start, start + SECTOR) && (await cache.read(this.row.id, idx, start, SECTOR, target, at))) return;
    const p = this.pending.get(idx);
    if (!p && !(await this.remoteHas(idx * g + start, idx * g + start + SECTOR))) {
      target.fill(0, at, at + SECTOR);
      return;
    }
    const fetch = p ?? this.startFetch(idx, 1, false);
    await fetch.waitFor(start, start + SECTOR);
    fetch.data.copy(target, at, start, start + SECTOR);
  }

  /** Sets the image's size. Shrinking drops what lies past the end (also data not yet
   *  uploaded); growing reads as zeros. Azure follows when the flusher runs. */
  async truncate(size: number): Promise<void> {
    this.checkWritable(size);
    if (size === this.localSize) return;
    if (size < this.localSize) {
      if (size % SECTOR !== 0) {
        // Keep the bytes of the last sector before the cut; it becomes dirty and its tail zeros.
        const g = this.deps.grainSize;
        const sectorStart = size - (size % SECTOR);
        const keep = await this.read(sectorStart, size - sectorStart);
        await this.writeGrain(Math.floor(sectorStart / g), sectorStart % g, keep);
      }
      // Counted together with the new size, never before it: a flush takes `cuts` and the
      // size at once, and one that counted this cut while it still saw the old size would
      // report the shrink settled, and Azure would keep the bytes past it.
      this.cuts++;
      this.shrinks.push({ cuts: this.cuts, size });
      this.epoch++;
      this.staged.clear();
      for (const [idx, p] of this.pending) {
        if ((idx + 1) * this.deps.grainSize > size) {
          this.pending.delete(idx);
          p.stored();
        }
      }
      // The new end holds before the cache is cut: a read while it is being cut must not
      // fetch (and cache) what Azure still holds past it.
      if (size < this.remoteEnd) this.setRow({ remoteEnd: size });
      this.localSize = size;
      this.setRow({ size });
      // Under the lock of the grain holding the new end: a fill of it under way finishes
      // before the cut, a later one sees the new epoch.
      await this.withGrainLock(Math.floor(size / this.deps.grainSize), () => this.deps.cache.truncate(this.row.id, size));
      this.epoch++;
    } else {
      // Set once, not again after the cut above: a write that grew the image while the
      // cache was being cut must keep its new size.
      this.cuts++;
      this.localSize = size;
      this.setRow({ size });
    }
    this.mtime = new Date();
    this.deps.onDirty(this);
  }

  /** fsync/fdatasync: with --sync local, what was written is durable on local disk (and
   *  uploaded later, also after a crash); with --sync cloud, it is in Azure. */
  async fsync(): Promise<void> {
    await this.deps.cache.sync(this.row.id);
    if (this.deps.sync === 'cloud') await this.deps.flushNow(this);
  }

  /** Deletes the blob in Azure and forgets it here, dirty data included. */
  async remove(): Promise<void> {
    const conditions = this.writeConditions();
    this.dropLease();
    this.epoch++;
    try {
      await this.deps.store.deleteBlob(this.ref, conditions);
    } catch (e) {
      if (!isBlobdiskError(e) || e.code !== 'ENOENT') throw e;
    }
    this.conflict = `${this.ref.name} was deleted`;
    await this.deps.cache.dropImage(this.row.id);
    this.deps.map.deleteImage(this.row.id);
  }

  /** Bytes of this image in the cache directory. */
  cachedBytes(): number {
    return this.deps.cache.cachedBytes(this.row.id);
  }

  /** Whether anything (data or a size change) waits for upload. */
  needsUpload(): boolean {
    return this.dirty;
  }

  /** Lets fetches under way store their grains, and stops the lease timer (the mount is
   *  going away; the lease itself is released by releaseLease()). */
  async close(): Promise<void> {
    this.dropLease();
    await Promise.all(this.fetching);
    this.buffers.clear();
  }
}
