/* One image: a blob seen as a file. Maps byte ranges to grains; the grain states live in
 * the cache (see lib/cache/cache.ts), what Azure holds of the blob and the sizes in
 * RemoteBlob (lib/remote/remote.ts). A read of a grain is served, in order, from the
 * cache file when it holds the sectors, from a fetch already under way (single flight;
 * released as soon as the requested bytes arrived), as zeros when Azure holds nothing
 * there (no pages, or past the blob's end), or by a new ranged GET.
 *
 * Writes go to the cache file and mark sectors dirty; they return once the grain map has
 * committed that. A write that covers a sector only partly first takes the rest of that
 * sector from the cache, the fetch, or zeros. The uploader (lib/flusher, reached through
 * the Uploads contract of lib/remote/uploads.ts) uploads later.
 *
 * Sequential reading widens a read-ahead window up to `readAheadGrains`; adjacent missing
 * grains share one GET of at most `maxFetchBytes`; read-ahead never takes more than
 * `fetchConcurrency` GETs. */

import { GrainCache } from '../cache/cache';
import { SECTOR } from '../cache/sectors';
import { BlobdiskError, isBlobdiskError } from '../errors';
import { GrainMap } from '../grainmap/grainmap';
import { Logger } from '../log';
import { ImageCounters, newImageCounters } from '../metrics';
import { ReadOptions, SyncMode } from '../options';
import { RemoteBlob } from '../remote/remote';
import { UploadSource, Uploads } from '../remote/uploads';
import { BlobInfo, BlobRef, BlobStore, MAX_PAGE_BLOB_BYTES } from '../store/types';
import { PendingGrain } from './pending';
import { BufferPool } from './pool';

/** How far a read may start from where the last one ended and still count as sequential. */
const SEQUENTIAL_SLACK = 1024 * 1024;

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
  readonly sync: SyncMode;
  /** Told whenever the image gets something to upload; uploads it now for fsync with
   *  --sync cloud; holds its uploads during a rename. */
  readonly uploads: Uploads;
}

/** A cached grain got ready ahead of a sequential reader by GrainCache.prefetch() (its
 *  checksum checked, its file open and in the page cache); `warm` once readNow() may serve it. */
interface Staged {
  readonly epoch: number;
  readonly prefetched: Promise<void>;
  warm: boolean;
}

export class Image implements UploadSource {
  readonly counters: ImageCounters = newImageCounters();
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
  mtime: Date;

  private constructor(
    private readonly deps: ImageDeps,
    readonly remote: RemoteBlob,
  ) {
    this.mtime = remote.info.lastModified;
    // Enough for the grains of a full read-ahead window in flight, at most 64 MiB.
    const g = deps.grainSize;
    const window = deps.read.readAheadGrains + Math.ceil(deps.read.maxFetchBytes / g) + 2;
    this.buffers = new BufferPool(g, Math.max(2, Math.min(window, Math.floor((64 * 1024 * 1024) / g))));
    // The blob changed elsewhere: what was fetched or staged under the old ETag is stale.
    remote.onChanged(() => {
      this.epoch++;
      this.staged.clear();
    });
  }

  /** The image of `ref` as Azure described it in `info`; drops cached grains of an older ETag. */
  static async open(deps: ImageDeps, account: string, ref: BlobRef, info: BlobInfo): Promise<Image> {
    const remote = await RemoteBlob.open(deps, account, ref, info);
    const image = new Image(deps, remote);
    await remote.revalidate(info);
    return image;
  }

  get id(): number {
    return this.remote.id;
  }
  /** The blob behind the image (it changes when the file is renamed). */
  get ref(): BlobRef {
    return this.remote.ref;
  }
  get size(): number {
    return this.remote.size;
  }
  get kind(): BlobInfo['kind'] {
    return this.remote.kind;
  }
  /** Why the image cannot be written (see RemoteBlob.conflict). */
  get conflict(): string | undefined {
    return this.remote.conflict;
  }

  /** Resolves when the fetches under way (possibly from the blob's old name) are done. */
  async settled(): Promise<void> {
    await Promise.all(this.fetching);
  }

  /** Another blob replaced this one (a rename onto its name): what the cache holds of it
   *  goes, and handles still open on it fail from now on. */
  async forget(): Promise<void> {
    this.epoch++;
    await this.remote.forget();
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
      await this.remote.refresh();
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

  /** Copies [start, end) of grain `idx` into target at `at` when it is staged and warm;
   *  false otherwise. */
  private copyStaged(idx: number, start: number, end: number, target: Buffer, at: number): boolean {
    const staged = this.staged.get(idx);
    if (staged?.warm !== true || staged.epoch !== this.epoch) return false;
    const cache = this.deps.cache;
    if (!cache.covers(this.id, idx, start, end) || !cache.readNow(this.id, idx, start, end - start, target, at)) return false;
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
      if (cache.covers(this.id, idx, start, end)) {
        if (await cache.read(this.id, idx, start, end - start, target, at)) {
          this.counters.hits++;
          return;
        }
        continue;
      }
      let p = this.pending.get(idx);
      if (!p) {
        if (!(await this.remote.has(idx * g, (idx + 1) * g))) {
          if (!cache.has(this.id, idx)) {
            target.fill(0, at, at + end - start);
            this.counters.zeroReads++;
            return;
          }
          // Part of the grain is local, the rest is zeros in Azure: complete it with zeros.
          const epoch = this.epoch;
          await this.withGrainLock(idx, () => cache.fill(this.id, idx, Buffer.alloc(g), () => epoch === this.epoch));
          continue;
        }
        p = this.pending.get(idx) ?? this.startFetch(idx, this.runAfter(idx), false);
        this.counters.misses++;
      }
      if (cache.has(this.id, idx)) {
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
    const stop = Math.min(start + g, this.remote.remoteEnd, this.size);
    if (stop <= start || this.pending.has(idx) || this.deps.cache.has(this.id, idx)) return 'no';
    if (this.remote.kind !== 'page') return 'yes';
    const ranges = this.remote.pages.known(start, stop);
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
    const lastGrain = Math.ceil(Math.min(this.size, this.remote.remoteEnd) / g);
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
        this.remote.pages.ranges(idx * g, (idx + 1) * g).catch(() => undefined);
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
    if (this.locks.has(idx) || idx * g >= this.size || !this.deps.cache.covers(this.id, idx, 0, Math.min(g, this.size - idx * g))) return false;
    const staged: Staged = {
      epoch: this.epoch,
      warm: false,
      prefetched: this.deps.cache.prefetch(this.id, idx).then(
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
    let end = Math.min(this.remote.remoteEnd, (first + count) * g);
    if (this.remote.kind === 'page') {
      // Fetch from the first to the last allocated byte; the rest of the run is zeros.
      const ranges = this.remote.pages.known(start, end);
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
        const options = this.remote.leaseId === undefined ? { etag: this.remote.etag } : {};
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
          await this.withGrainLock(p.idx, async () => (valid() ? this.deps.cache.fill(this.id, p.idx, p.data, valid, p.checksum) : false));
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
    if (this.remote.conflict) throw new BlobdiskError('EIO', this.remote.conflict);
    if (this.remote.kind === 'append') throw new BlobdiskError('EROFS', `${this.ref.name} is an append blob; blobdisk only reads those`);
    if (this.remote.kind === 'page' && end > MAX_PAGE_BLOB_BYTES) {
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
      this.deps.cache.writeNow(this.id, first, offset - first * g, data);
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
    if (offset === this.lastWriteEnd && end - last * g >= g / 2) this.deps.cache.prepare(this.id, last + 1);
    this.lastWriteEnd = end;
    this.remote.wroteTo(end);
    this.mtime = new Date();
    this.deps.uploads.notify(this);
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
      await this.deps.cache.write(this.id, idx, alignedStart, data, this.deps.dirtyWaitMs);
    });
    this.staged.delete(idx);
  }

  /** The sector at `start` of grain `idx` as it reads now, into `target` at `at` (under the grain lock). */
  private async currentSector(idx: number, start: number, target: Buffer, at: number): Promise<void> {
    const cache = this.deps.cache;
    const g = this.deps.grainSize;
    if (cache.covers(this.id, idx, start, start + SECTOR) && (await cache.read(this.id, idx, start, SECTOR, target, at))) return;
    const p = this.pending.get(idx);
    if (!p && !(await this.remote.has(idx * g + start, idx * g + start + SECTOR))) {
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
    if (size === this.size) return;
    if (size < this.size) {
      if (size % SECTOR !== 0) {
        // Keep the bytes of the last sector before the cut; it becomes dirty and its tail zeros.
        const g = this.deps.grainSize;
        const sectorStart = size - (size % SECTOR);
        const keep = await this.read(sectorStart, size - sectorStart);
        await this.writeGrain(Math.floor(sectorStart / g), sectorStart % g, keep);
      }
      this.epoch++;
      this.staged.clear();
      for (const [idx, p] of this.pending) {
        if ((idx + 1) * this.deps.grainSize > size) {
          this.pending.delete(idx);
          p.stored();
        }
      }
      this.remote.shrink(size);
      // Under the lock of the grain holding the new end: a fill of it under way finishes
      // before the cut, a later one sees the new epoch.
      await this.withGrainLock(Math.floor(size / this.deps.grainSize), () => this.deps.cache.truncate(this.id, size));
      this.epoch++;
    } else {
      // Set once, not again after the cut above: a write that grew the image while the
      // cache was being cut must keep its new size.
      this.remote.grow(size);
    }
    this.mtime = new Date();
    this.deps.uploads.notify(this);
  }

  /** fsync/fdatasync: with --sync local, what was written is durable on local disk (and
   *  uploaded later, also after a crash); with --sync cloud, it is in Azure. */
  async fsync(): Promise<void> {
    await this.deps.cache.sync(this.id);
    if (this.deps.sync === 'cloud') await this.deps.uploads.flush([this]);
  }

  /** Deletes the blob in Azure and forgets it here, dirty data included. */
  async remove(): Promise<void> {
    this.epoch++;
    await this.remote.remove();
  }

  /** Bytes of this image in the cache directory. */
  cachedBytes(): number {
    return this.deps.cache.cachedBytes(this.id);
  }

  /** Whether anything (data or a size change) waits for upload. */
  needsUpload(): boolean {
    return this.remote.needsUpload();
  }

  /** Lets fetches under way store their grains, and stops the lease timer (the mount is
   *  going away; the lease itself is released by RemoteBlob.releaseLease()). */
  async close(): Promise<void> {
    this.remote.lease.drop();
    await Promise.all(this.fetching);
    this.buffers.clear();
  }
}
