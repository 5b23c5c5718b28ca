/* One image: a blob seen as a file. Maps byte ranges to grains and serves each grain
 * from, in order: a fetch already under way (single flight), the cache directory, known
 * zeros (no page holds it), or a new ranged GET through the store.
 *
 * Grain states on the read path:
 *   absent ──read miss / read-ahead──> fetching ──stream done, file written──> cached
 *   fetching ──GET fails──> absent (waiters get the error)
 *   cached ──checksum fails / evicted / blob's ETag changed──> absent
 * A reader waiting on a fetching grain is released once its bytes have arrived.
 * Sequential reading (each read starting where the last ended) widens a read-ahead
 * window up to `readAheadGrains`; adjacent missing grains share one GET of at most
 * `maxFetchBytes`, and read-ahead never takes more than `fetchConcurrency` GETs. */

import { GrainCache } from '../cache/cache';
import { BlobdiskError, isBlobdiskError } from '../errors';
import { GrainMap, ImageRow } from '../grainmap/grainmap';
import { Logger } from '../log';
import { ImageCounters, newImageCounters } from '../metrics';
import { ReadOptions } from '../options';
import { BlobInfo, BlobRef, BlobStore, ByteRange } from '../store/types';
import { PageMap } from './pagemap';
import { PendingGrain } from './pending';

/** Metadata key holding a page blob's logical size when it is not a multiple of 512. */
export const LOGICAL_SIZE_KEY = 'blobdisk_size';

/** Page ranges are listed in windows of this many grains. */
const PAGE_WINDOW_GRAINS = 256;

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
}

export class Image {
  readonly counters: ImageCounters = newImageCounters();
  private row: ImageRow;
  private info: BlobInfo;
  private pageMap: PageMap | undefined;
  private readonly pending = new Map<number, PendingGrain>();
  private lastEnd = -1;
  private streak = 0;

  private constructor(
    private readonly deps: ImageDeps,
    readonly ref: BlobRef,
    row: ImageRow,
    info: BlobInfo,
  ) {
    this.row = row;
    this.info = info;
  }

  /** The image of `ref` as Azure described it in `info`; drops cached grains of an older ETag. */
  static async open(deps: ImageDeps, account: string, ref: BlobRef, info: BlobInfo): Promise<Image> {
    const row = deps.map.ensureImage(account, ref.container, ref.name, info.kind, logicalSize(info));
    const image = new Image(deps, ref, row, info);
    await image.revalidate(info);
    return image;
  }

  get id(): number {
    return this.row.id;
  }
  get size(): number {
    return logicalSize(this.info);
  }
  get kind(): BlobInfo['kind'] {
    return this.info.kind;
  }
  get etag(): string {
    return this.info.etag;
  }
  get blobInfo(): BlobInfo {
    return this.info;
  }

  /** Adopts what Azure now says of the blob. A different ETag than the cached grains were
   *  read under means the blob changed elsewhere: its cached grains are dropped. */
  async revalidate(info: BlobInfo): Promise<void> {
    const changed = this.row.etag !== info.etag;
    this.info = info;
    if (!changed) return;
    if (this.row.etag !== null) {
      const dropped = await this.deps.cache.dropClean(this.row.id);
      if (dropped > 0) this.deps.log.info(`${this.ref.container}/${this.ref.name} changed in Azure; dropped ${dropped} cached grains`);
    }
    this.deps.map.updateImage(this.row.id, { etag: info.etag, kind: info.kind, size: logicalSize(info) });
    this.row = { ...this.row, etag: info.etag, kind: info.kind, size: logicalSize(info) };
    this.pageMap?.reset(info.etag, info.size);
  }

  /** Asks Azure for the blob's properties again and revalidates. ENOENT when it is gone. */
  async refresh(): Promise<void> {
    await this.revalidate(await this.deps.store.getInfo(this.ref));
  }

  private pages(): PageMap {
    if (!this.pageMap) {
      this.pageMap = new PageMap(this.deps.store, this.ref, PAGE_WINDOW_GRAINS * this.deps.grainSize, this.info.etag, this.info.size);
    }
    return this.pageMap;
  }

  /** Bytes held by pages (page blobs), for st_blocks; remembered per ETag in the grain map. */
  async allocatedBytes(): Promise<number> {
    if (this.info.kind !== 'page') return this.size;
    if (this.row.allocatedEtag === this.info.etag && this.row.allocated !== null) return this.row.allocated;
    const etag = this.info.etag;
    const allocated = await this.pages().allocatedBytes();
    if (this.info.etag === etag) {
      this.deps.map.updateImage(this.row.id, { allocated, allocatedEtag: etag });
      this.row = { ...this.row, allocated, allocatedEtag: etag };
    }
    return allocated;
  }

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

  private async readOnce(target: Buffer, offset: number, length: number): Promise<number> {
    const end = Math.min(offset + length, this.size);
    if (offset >= end) return 0;
    const sequential = offset === this.lastEnd;
    this.streak = sequential ? this.streak + (end - offset) : 0;
    this.lastEnd = end;
    const g = this.deps.grainSize;
    const parts: Promise<void>[] = [];
    for (let idx = Math.floor(offset / g); idx * g < end; idx++) {
      const from = Math.max(offset, idx * g);
      const to = Math.min(end, (idx + 1) * g);
      parts.push(this.readGrain(idx, from - idx * g, to - idx * g, target, from - offset));
    }
    if (this.streak > 0) this.readAhead(end);
    await Promise.all(parts);
    this.counters.bytesRead += end - offset;
    return end - offset;
  }

  private grainLength(idx: number): number {
    return Math.min(this.deps.grainSize, this.size - idx * this.deps.grainSize);
  }

  /** Copies [start, end) of grain `idx` into target at `at`. */
  private async readGrain(idx: number, start: number, end: number, target: Buffer, at: number): Promise<void> {
    const waiting = this.pending.get(idx);
    if (waiting) return this.copyWhenReady(waiting, start, end, target, at);
    if (this.deps.cache.has(this.row.id, idx)) {
      if (await this.deps.cache.read(this.row.id, idx, start, end - start, target, at)) {
        this.counters.hits++;
        return;
      }
    }
    const g = this.deps.grainSize;
    let ranges: ByteRange[] | undefined;
    if (this.info.kind === 'page') {
      ranges = await this.pages().ranges(idx * g, idx * g + this.grainLength(idx));
      if (ranges.length === 0 && !this.pending.has(idx)) {
        target.fill(0, at, at + end - start);
        this.counters.zeroReads++;
        return;
      }
    }
    // Another reader may have started the fetch while we looked at the cache and page map.
    const started = this.pending.get(idx) ?? this.startFetch(idx, this.runAfter(idx), false);
    this.counters.misses++;
    return this.copyWhenReady(started, start, end, target, at);
  }

  private async copyWhenReady(p: PendingGrain, start: number, end: number, target: Buffer, at: number): Promise<void> {
    await p.waitFor(start, end);
    p.data.copy(target, at, start, end);
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
    if (idx * g >= this.size || this.pending.has(idx) || this.deps.cache.has(this.row.id, idx)) return 'no';
    if (this.info.kind !== 'page') return 'yes';
    const ranges = this.pages().known(idx * g, idx * g + this.grainLength(idx));
    if (!ranges) return 'unknown';
    return ranges.length > 0 ? 'yes' : 'no';
  }

  private readAhead(end: number): void {
    const g = this.deps.grainSize;
    const window = Math.min(this.deps.read.readAheadGrains, Math.max(2, 2 * Math.ceil(this.streak / g)));
    if (window === 0) return;
    const maxRun = Math.max(1, Math.floor(this.deps.read.maxFetchBytes / g));
    const first = Math.floor(end / g);
    let idx = first;
    while (idx < first + window && this.deps.budget.available) {
      const state = this.fetchable(idx);
      if (state === 'unknown') {
        // List this window's page ranges now; the next sequential read continues from here.
        this.pages().ranges(idx * g, idx * g + this.grainLength(idx)).catch(() => undefined);
        return;
      }
      if (state === 'no') {
        idx++;
        continue;
      }
      let count = 1;
      while (count < maxRun && idx + count < first + window && this.fetchable(idx + count) === 'yes') count++;
      this.startFetch(idx, count, true);
      idx += count;
    }
  }

  /** Starts one ranged GET for grains [first, first + count) and returns the first's pending state. */
  private startFetch(first: number, count: number, readAhead: boolean): PendingGrain {
    const g = this.deps.grainSize;
    let start = first * g;
    let end = Math.min(this.size, (first + count) * g);
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
      const length = this.grainLength(idx);
      const from = Math.min(length, Math.max(0, start - base));
      const to = Math.max(from, Math.min(length, end - base));
      const p = new PendingGrain(idx, length, from, to);
      this.pending.set(idx, p);
      grains.push(p);
    }
    this.counters.fetches++;
    if (readAhead) this.counters.readAheadFetches++;
    this.deps.budget.inFlight++;
    void this.runFetch(grains, start, end).finally(() => this.deps.budget.inFlight--);
    const head = grains[0];
    if (!head) throw new BlobdiskError('EIO', 'empty fetch');
    return head;
  }

  private async runFetch(grains: PendingGrain[], start: number, end: number): Promise<void> {
    const g = this.deps.grainSize;
    try {
      if (end > start) {
        const stream = await this.deps.store.read(this.ref, start, end - start, { etag: this.info.etag });
        let pos = start;
        for await (const chunk of stream) {
          let used = 0;
          while (used < chunk.length) {
            const p = grains[Math.floor(pos / g) - (grains[0]?.idx ?? 0)];
            if (!p || pos >= end) throw new BlobdiskError('EIO', `Azure sent more bytes than asked for ${this.ref.name}`);
            const take = Math.min(chunk.length - used, p.idx * g + p.to - pos);
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
          await this.deps.cache.storeClean(this.row.id, p.idx, p.data);
        } catch (e) {
          this.deps.log.warn(`could not cache grain ${p.idx} of ${this.ref.name}: ${(e as Error).message}`);
        } finally {
          this.pending.delete(p.idx);
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

  /** Bytes of this image in the cache directory. */
  cachedBytes(): number {
    return this.deps.cache.cachedBytes(this.row.id);
  }
}
