/* Reading an image: byte ranges to grains. A grain is served, in order, from a staged
 * grain (cached and made ready ahead of a sequential reader), from the cache file when it
 * holds the sectors, from a fetch already under way, as zeros when Azure holds nothing
 * there (no pages, or past the blob's end), or by a new fetch.
 *
 * Sequential reading (a streak: reads starting near where the last ended) widens a
 * read-ahead window up to `readAheadGrains`; adjacent missing grains share one GET of at
 * most `maxFetchBytes`; read-ahead never takes more than `fetchConcurrency` GETs. */

import { BlobdiskError, isBlobdiskError } from '../errors';
import { ImageContext } from './context';
import { Fetcher } from './fetcher';

/** A cached grain got ready ahead of a sequential reader by GrainCache.prefetch() (its
 *  checksum checked, its file open and in the page cache); `warm` once readNow() may serve it. */
interface Staged {
  readonly epoch: number;
  readonly prefetched: Promise<void>;
  warm: boolean;
}

export class Reader {
  /** Cached grains got ready ahead of a sequential reader (a read-ahead of the cache
   *  directory, see Staged). Dropped behind the reader, on any write to the grain, and on a
   *  new epoch. */
  private readonly staged = new Map<number, Staged>();
  private lastEnd = -1;
  private streak = 0;

  constructor(
    private readonly ctx: ImageContext,
    private readonly fetcher: Fetcher,
  ) {}

  /** Forgets grain `idx` staged (it is being written). */
  unstage(idx: number): void {
    this.staged.delete(idx);
  }

  /** Forgets every staged grain (a new epoch). */
  unstageAll(): void {
    this.staged.clear();
  }

  /** Reads `length` bytes at `offset` into `target` (from its start). Returns the bytes
   *  read: fewer at the end of the image, 0 past it. Never-written ranges read as zeros.
   *  Rejects only with BlobdiskError: not-found if the blob vanished, unavailable after retries. */
  async readInto(target: Buffer, offset: number, length: number): Promise<number> {
    try {
      return await this.readOnce(target, offset, length);
    } catch (e) {
      if (!isBlobdiskError(e) || e.kind !== 'stale') throw e;
      // The blob changed under us: take its new state and read once more.
      await this.ctx.remote.refresh();
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
   *  reader of cached grains), cached with its checksum checked (a random reader of cached
   *  grains), or known to be zeros (nothing cached, nothing under way, no pages in Azure):
   *  the bytes read, as readInto() counts them, or undefined when the read needs readInto().
   *  Saves the FUSE request its turns through promises and the thread pool. */
  readNow(target: Buffer, offset: number, length: number): number | undefined {
    const end = Math.min(offset + length, this.ctx.size);
    if (offset >= end) return undefined;
    const g = this.ctx.deps.grainSize;
    const first = Math.floor(offset / g);
    const last = Math.floor((end - 1) / g);
    for (let idx = first; idx <= last; idx++) {
      if (this.isWarm(idx)) continue;
      const from = Math.max(offset, idx * g) - idx * g;
      const to = Math.min(end, (idx + 1) * g) - idx * g;
      if (this.ctx.deps.cache.covers(this.ctx.id, idx, from, to) ? !this.ctx.deps.cache.checked(this.ctx.id, idx) : !this.knownZeros(idx)) return undefined;
    }
    for (let idx = first; idx <= last; idx++) {
      const from = Math.max(offset, idx * g);
      const to = Math.min(end, (idx + 1) * g);
      // Rare: the grain left the cache after it was staged; readInto() takes it from here.
      if (!this.copyCached(idx, from - idx * g, to - idx * g, target, from - offset)) return undefined;
    }
    this.noteReader(offset, end);
    if (this.streak > 0) this.readAhead(end);
    this.ctx.counters.bytesRead += end - offset;
    return end - offset;
  }

  /** The FUSE binding served `count` reads of `bytes` natively, the last at
   *  [offset, offset + length) (see lib/cache/native.ts): counted (a hit a read), and a
   *  sequential reader's streak goes on from the last as if readNow() had served it. */
  readNatively(count: number, bytes: number, offset: number, length: number): void {
    this.ctx.counters.hits += count;
    this.ctx.counters.bytesRead += bytes;
    this.noteReader(offset, offset + length);
    if (this.streak > 0) this.readAhead(offset + length);
  }

  private isWarm(idx: number): boolean {
    const staged = this.staged.get(idx);
    return staged?.warm === true && staged.epoch === this.ctx.epoch;
  }

  /** Whether grain `idx` reads as zeros without asking anyone: not cached, no fetch under
   *  way, and past what Azure holds or a page range already listed as empty. */
  private knownZeros(idx: number): boolean {
    if (this.ctx.deps.cache.has(this.ctx.id, idx) || this.fetcher.pending.has(idx)) return false;
    const g = this.ctx.deps.grainSize;
    const start = idx * g;
    const stop = Math.min(start + g, this.ctx.remote.remoteEnd);
    if (stop <= start) return true;
    if (this.ctx.remote.kind !== 'page') return false;
    return this.ctx.remote.pages.known(start, stop)?.length === 0;
  }

  /** Copies [start, end) of grain `idx` into target at `at` at once: from the cache (staged
   *  or checked), or zeros (see knownZeros); false when it cannot. */
  private copyCached(idx: number, start: number, end: number, target: Buffer, at: number): boolean {
    if (this.copyStaged(idx, start, end, target, at)) return true;
    const cache = this.ctx.deps.cache;
    if (cache.covers(this.ctx.id, idx, start, end)) {
      if (!cache.checked(this.ctx.id, idx) || !cache.readNow(this.ctx.id, idx, start, end - start, target, at)) return false;
      this.ctx.counters.hits++;
      // Its next reads of cached sectors are served by the FUSE binding itself (within the size: no short reads there).
      if ((idx + 1) * this.ctx.deps.grainSize <= this.ctx.size) cache.publishRead(this.ctx.id, idx);
      return true;
    }
    if (!this.knownZeros(idx)) return false;
    target.fill(0, at, at + end - start);
    this.ctx.counters.zeroReads++;
    return true;
  }

  /** The kernel sends a sequential reader's requests a few at a time, and they may arrive
   *  out of order: a read starting near where the last one ended continues the streak. */
  private noteReader(offset: number, end: number): void {
    const near = this.lastEnd >= 0 && Math.abs(offset - this.lastEnd) <= this.ctx.timing.tunables.sequentialSlackBytes;
    this.streak = near ? this.streak + (end - offset) : 0;
    this.lastEnd = near ? Math.max(this.lastEnd, end) : end;
  }

  private async readOnce(target: Buffer, offset: number, length: number, reader = true): Promise<number> {
    const end = Math.min(offset + length, this.ctx.size);
    if (offset >= end) return 0;
    if (reader) this.noteReader(offset, end);
    const g = this.ctx.deps.grainSize;
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
    if (reader) this.ctx.counters.bytesRead += end - offset;
    return end - offset;
  }

  /** Copies [start, end) of grain `idx` into target at `at` when it is staged and warm;
   *  false otherwise. */
  private copyStaged(idx: number, start: number, end: number, target: Buffer, at: number): boolean {
    if (!this.isWarm(idx)) return false;
    const cache = this.ctx.deps.cache;
    if (!cache.covers(this.ctx.id, idx, start, end) || !cache.readNow(this.ctx.id, idx, start, end - start, target, at)) return false;
    this.ctx.counters.hits++;
    return true;
  }

  /** Copies [start, end) of grain `idx` into target at `at`. */
  private async readGrain(idx: number, start: number, end: number, target: Buffer, at: number): Promise<void> {
    const cache = this.ctx.deps.cache;
    const g = this.ctx.deps.grainSize;
    const staged = this.staged.get(idx);
    if (staged && staged.epoch === this.ctx.epoch) {
      await staged.prefetched;
      if (this.copyStaged(idx, start, end, target, at)) return;
    }
    for (let attempt = 0; attempt < 4; attempt++) {
      if (cache.covers(this.ctx.id, idx, start, end)) {
        if (await cache.read(this.ctx.id, idx, start, end - start, target, at)) {
          this.ctx.counters.hits++;
          return;
        }
        continue;
      }
      let p = this.fetcher.pending.get(idx);
      if (!p) {
        if (!(await this.ctx.remote.has(idx * g, (idx + 1) * g))) {
          if (!cache.has(this.ctx.id, idx)) {
            target.fill(0, at, at + end - start);
            this.ctx.counters.zeroReads++;
            return;
          }
          // Part of the grain is local, the rest is zeros in Azure: complete it with zeros.
          const epoch = this.ctx.epoch;
          await this.ctx.locks.run(idx, () => cache.fill(this.ctx.id, idx, Buffer.alloc(g), () => epoch === this.ctx.epoch));
          continue;
        }
        p = this.fetcher.pending.get(idx) ?? this.fetcher.start(idx, this.runAfter(idx), false);
        this.ctx.counters.misses++;
      }
      if (cache.has(this.ctx.id, idx)) {
        // Local sectors win over fetched ones: read the merged grain from the cache.
        await p.finished;
        continue;
      }
      await p.copyTo(start, end, target, at);
      return;
    }
    throw new BlobdiskError('failed', `grain ${idx} of ${this.ctx.remote.ref.name} kept leaving the cache while being read`);
  }

  /** Fetches grain `idx` into the cache ahead of any reader (warm-up, lib/image/warm.ts):
   *  nothing when it is cached or known zeros; a fetch under way is waited for, never
   *  doubled, and a reader of a grain being warmed shares its fetch. True when it fetched. */
  async warm(idx: number): Promise<boolean> {
    const g = this.ctx.deps.grainSize;
    if (this.ctx.deps.cache.has(this.ctx.id, idx)) return false;
    if (this.fetchable(idx) === 'unknown') await this.ctx.remote.pages.ranges(idx * g, (idx + 1) * g);
    const under = this.fetcher.pending.get(idx);
    if (under) return under.finished.then(() => false);
    if (this.fetchable(idx) !== 'yes') return false;
    await this.fetcher.start(idx, 1, true).finished;
    return true;
  }

  /** Grains worth fetching together with `idx` on a demand miss: the following missing
   *  ones, while the reader is sequential, up to maxFetchBytes. */
  private runAfter(idx: number): number {
    if (this.streak === 0) return 1;
    const max = Math.max(1, Math.floor(this.ctx.deps.read.maxFetchBytes / this.ctx.deps.grainSize));
    let count = 1;
    while (count < max && this.fetchable(idx + count) === 'yes') count++;
    return count;
  }

  /** Whether grain `idx` needs a GET: 'no' (cached, under way, past the end or known
   *  zeros), 'yes', or 'unknown' (its page ranges are not listed yet). */
  private fetchable(idx: number): 'yes' | 'no' | 'unknown' {
    const g = this.ctx.deps.grainSize;
    const start = idx * g;
    const stop = Math.min(start + g, this.ctx.remote.remoteEnd, this.ctx.size);
    if (stop <= start || this.fetcher.pending.has(idx) || this.ctx.deps.cache.has(this.ctx.id, idx)) return 'no';
    if (this.ctx.remote.kind !== 'page') return 'yes';
    const ranges = this.ctx.remote.pages.known(start, stop);
    if (!ranges) return 'unknown';
    return ranges.length > 0 ? 'yes' : 'no';
  }

  private readAhead(end: number): void {
    const g = this.ctx.deps.grainSize;
    const window = Math.min(this.ctx.deps.read.readAheadGrains, Math.max(2, 2 * Math.ceil(this.streak / g)));
    if (window === 0) return;
    const first = Math.floor(end / g);
    const limit = first + window;
    // One GET per maxFetchBytes: a GET costs far more CPU (here and in the server) than the
    // bytes it carries, so the moving edge of the window waits until a whole run is missing.
    const batch = Math.min(window, Math.max(1, Math.floor(this.ctx.deps.read.maxFetchBytes / g)));
    const lastGrain = Math.ceil(Math.min(this.ctx.size, this.ctx.remote.remoteEnd) / g);
    for (const idx of this.staged.keys()) if (idx < first - 1) this.staged.delete(idx);
    let idx = first;
    while (idx < limit) {
      if (this.stage(idx)) {
        idx++;
        continue;
      }
      if (!this.ctx.deps.budget.available) return;
      const state = this.fetchable(idx);
      if (state === 'unknown') {
        // List this window's page ranges now; the next sequential read continues from here.
        this.ctx.remote.pages.ranges(idx * g, (idx + 1) * g).catch(() => undefined);
        return;
      }
      if (state === 'no') {
        idx++;
        continue;
      }
      let count = 1;
      while (count < batch && idx + count < limit && this.fetchable(idx + count) === 'yes') count++;
      if (count < batch && idx + count === limit && limit < lastGrain && idx > first) return;
      this.fetcher.start(idx, count, true);
      idx += count;
    }
  }

  /** Gets cached grain `idx` ready for a sequential reader (see Staged); false when the
   *  cache does not hold all of it. */
  private stage(idx: number): boolean {
    if (this.staged.has(idx)) return true;
    const g = this.ctx.deps.grainSize;
    if (this.ctx.locks.has(idx) || idx * g >= this.ctx.size || !this.ctx.deps.cache.covers(this.ctx.id, idx, 0, Math.min(g, this.ctx.size - idx * g))) return false;
    const staged: Staged = {
      epoch: this.ctx.epoch,
      warm: false,
      prefetched: this.ctx.deps.cache.prefetch(this.ctx.id, idx).then(
        (ok) => {
          if (!ok || this.staged.get(idx) !== staged || staged.epoch !== this.ctx.epoch) return;
          staged.warm = true;
          // Checked and open: the reader's requests of it are served by the FUSE binding
          // itself, as after a first read here (within the size: no short reads there).
          if ((idx + 1) * g <= this.ctx.size && !this.ctx.locks.has(idx)) this.ctx.deps.cache.publishRead(this.ctx.id, idx);
        },
        () => undefined,
      ),
    };
    this.staged.set(idx, staged);
    // Bounded: a reader that jumped around leaves stale grains behind; the oldest go first.
    while (this.staged.size > 2 * this.ctx.deps.read.readAheadGrains + 2) {
      const oldest = this.staged.keys().next().value;
      if (oldest === undefined) break;
      this.staged.delete(oldest);
    }
    return true;
  }
}
