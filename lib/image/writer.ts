/* Writing an image: writes go to the cache file and mark sectors dirty; they return once
 * the grain map has committed that, and the image tells its Uploads. A write that covers
 * a sector only partly first takes the rest of that sector from the cache, the fetch, or
 * zeros. A write of whole sectors into one cached grain that nobody holds is done at once
 * (writeNow), without a turn through promises. Truncates move the sizes through
 * RemoteBlob (see its table) and cut the cache. A punched hole (guest discard) is a write
 * of zeros, skipped where nothing is cached and Azure holds no data; a whole grain of it
 * costs no disk (its file is cut to nothing and grown back); the page upload turns zero
 * runs into Clear Pages. */

import { SECTOR } from '../cache/sectors';
import { BlobdiskError } from '../errors';
import { MAX_PAGE_BLOB_BYTES } from '../store/types';
import { ImageContext } from './context';
import { Fetcher } from './fetcher';
import { Reader } from './reader';

export class Writer {
  /** Where the last write ended: a write starting there continues a sequential writer. */
  private lastWriteEnd = -1;

  constructor(
    private readonly ctx: ImageContext,
    private readonly reader: Reader,
    private readonly fetcher: Fetcher,
    /** Tells the uploader the image has something to upload. */
    private readonly notify: () => void,
  ) {}

  private checkWritable(end: number): void {
    if (this.ctx.remote.conflict) throw new BlobdiskError('conflict', this.ctx.remote.conflict);
    if (this.ctx.remote.kind === 'append') throw new BlobdiskError('read-only', `${this.ctx.remote.ref.name} is an append blob; blobdisk only reads those`);
    if (this.ctx.remote.kind === 'page' && end > MAX_PAGE_BLOB_BYTES) {
      throw new BlobdiskError('too-large', `page blobs end at 8 TiB; ${this.ctx.remote.ref.name} cannot grow to ${end} bytes`);
    }
  }

  /** Writes `data` at `offset`, growing the image when it ends past it. Resolves once the
   *  bytes are in the cache and the grain map has recorded them (not yet in Azure).
   *  conflict on a conflict, too-large past the page-blob limit, no-space when the cache stays full
   *  of data not yet uploaded. */
  async write(data: Buffer, offset: number): Promise<number> {
    const now = this.writeNow(data, offset);
    if (now !== undefined) return now;
    const end = offset + data.length;
    const g = this.ctx.deps.grainSize;
    const cp = this.ctx.checkpoints;
    if (cp?.open) {
      // An open checkpoint's grains keep their bytes of its fsync until they are uploaded,
      // and the image its size (see lib/remote/checkpoint.ts).
      await cp.wait(undefined, end > this.ctx.size);
      for (let idx = Math.floor(offset / g); idx * g < end; idx++) await cp.wait(idx);
    }
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
    const g = this.ctx.deps.grainSize;
    const first = Math.floor(offset / g);
    const now =
      offset % SECTOR === 0 && end % SECTOR === 0 && end <= (first + 1) * g && !this.ctx.locks.has(first) &&
      !this.ctx.checkpoints?.holds(first, end > this.ctx.size) &&
      this.ctx.deps.cache.writeNow(this.ctx.id, first, offset - first * g, data);
    if (!now) return undefined;
    this.reader.unstage(first);
    this.written(offset, end);
    // Its next writes are landed by the FUSE binding itself while nothing holds the grain
    // (a lock or checkpoint revokes it) and it lies within the size (no write there grows it).
    if ((first + 1) * g <= this.ctx.size) this.ctx.deps.cache.publishWrite(this.ctx.id, first);
    return data.length;
  }

  /** The FUSE binding landed writes in `grains` natively, the last at [offset, offset +
   *  length) (see lib/cache/native.ts); the cache has recorded their sectors. */
  landedNatively(grains: ReadonlySet<number>, offset: number, length: number): void {
    for (const idx of grains) this.reader.unstage(idx);
    this.written(offset, offset + length);
  }

  /** Makes [offset, offset + length) read as zeros without changing the size (fallocate
   *  PUNCH_HOLE or ZERO_RANGE), one grain at a time. Rejects as write() does. */
  async zero(offset: number, length: number): Promise<void> {
    const end = Math.min(offset + length, this.ctx.size);
    this.checkWritable(end);
    const g = this.ctx.deps.grainSize;
    let zeros: Buffer | undefined;
    for (let idx = Math.floor(offset / g); idx * g < end; idx++) {
      const from = Math.max(offset, idx * g);
      const to = Math.min(end, (idx + 1) * g);
      // Already zeros: no cached data and no data in Azure (a fetch under way means there is).
      if (!this.ctx.deps.cache.has(this.ctx.id, idx) && !this.fetcher.pending.get(idx) && !(await this.ctx.remote.has(from, to))) continue;
      if (to - from === g) {
        await this.zeroGrain(idx);
        continue;
      }
      zeros ??= Buffer.alloc(Math.min(g, end - offset));
      await this.write(zeros.subarray(0, to - from), from);
    }
  }

  /** Makes the whole of grain `idx` zeros, written, as a write of zeros would. */
  private async zeroGrain(idx: number): Promise<void> {
    const g = this.ctx.deps.grainSize;
    const cp = this.ctx.checkpoints;
    if (cp?.open) await cp.wait(idx);
    this.reader.unstage(idx);
    await this.ctx.locks.run(idx, () => this.ctx.deps.cache.zeroGrain(this.ctx.id, idx, this.ctx.deps.dirtyWaitMs));
    this.reader.unstage(idx);
    this.written(idx * g, (idx + 1) * g);
  }

  /** After a write landed: the image's size, times and the flusher's turn; a sequential
   *  writer past the middle of a grain gets the next grain's file opened ahead. */
  private written(offset: number, end: number): void {
    const g = this.ctx.deps.grainSize;
    const last = Math.floor((end - 1) / g);
    if (offset === this.lastWriteEnd && end - last * g >= g / 2) this.ctx.deps.cache.prepare(this.ctx.id, last + 1);
    this.lastWriteEnd = end;
    this.ctx.checkpoints?.wrote();
    this.ctx.remote.wroteTo(end);
    this.ctx.mtime = this.ctx.now();
    this.notify();
  }

  /** Writes `chunk` at `start` within grain `idx`, widened to whole sectors. */
  private async writeGrain(idx: number, start: number, chunk: Buffer): Promise<void> {
    const g = this.ctx.deps.grainSize;
    const end = start + chunk.length;
    const alignedStart = Math.floor(start / SECTOR) * SECTOR;
    const alignedEnd = Math.min(g, Math.ceil(end / SECTOR) * SECTOR);
    // A staged grain is dropped for a write (it is staged again by the next sequential read);
    // one staged while the write runs is dropped after.
    this.reader.unstage(idx);
    await this.ctx.locks.run(idx, async () => {
      let data = chunk;
      if (alignedStart !== start || alignedEnd !== end) {
        data = Buffer.alloc(alignedEnd - alignedStart);
        if (alignedStart !== start) await this.currentSector(idx, alignedStart, data, 0);
        if (alignedEnd !== end && (alignedEnd - SECTOR !== alignedStart || alignedStart === start)) {
          await this.currentSector(idx, alignedEnd - SECTOR, data, data.length - SECTOR);
        }
        chunk.copy(data, start - alignedStart);
      }
      await this.ctx.deps.cache.write(this.ctx.id, idx, alignedStart, data, this.ctx.deps.dirtyWaitMs);
    });
    this.reader.unstage(idx);
  }

  /** The sector at `start` of grain `idx` as it reads now, into `target` at `at` (under the grain lock). */
  private async currentSector(idx: number, start: number, target: Buffer, at: number): Promise<void> {
    const cache = this.ctx.deps.cache;
    const g = this.ctx.deps.grainSize;
    if (cache.covers(this.ctx.id, idx, start, start + SECTOR) && (await cache.read(this.ctx.id, idx, start, SECTOR, target, at))) return;
    const p = this.fetcher.pending.get(idx);
    if (!p && !(await this.ctx.remote.has(idx * g + start, idx * g + start + SECTOR))) {
      target.fill(0, at, at + SECTOR);
      return;
    }
    const fetch = p ?? this.fetcher.start(idx, 1, false);
    await fetch.waitFor(start, start + SECTOR);
    fetch.data.copy(target, at, start, start + SECTOR);
  }

  /** Sets the image's size. Shrinking drops what lies past the end (also data not yet
   *  uploaded); growing reads as zeros. Azure follows when the flusher runs. */
  async truncate(size: number): Promise<void> {
    this.checkWritable(size);
    if (size === this.ctx.size) return;
    await this.ctx.checkpoints?.wait(undefined, true);
    this.ctx.checkpoints?.wrote();
    if (size < this.ctx.size) {
      if (size % SECTOR !== 0) {
        // Keep the bytes of the last sector before the cut; it becomes dirty and its tail zeros.
        const g = this.ctx.deps.grainSize;
        const sectorStart = size - (size % SECTOR);
        const keep = await this.reader.read(sectorStart, size - sectorStart);
        await this.writeGrain(Math.floor(sectorStart / g), sectorStart % g, keep);
      }
      this.ctx.epoch++;
      this.reader.unstageAll();
      this.fetcher.dropPast(size);
      this.ctx.remote.shrink(size);
      // Under the lock of the grain holding the new end: a fill of it under way finishes
      // before the cut, a later one sees the new epoch.
      await this.ctx.locks.run(Math.floor(size / this.ctx.deps.grainSize), () => this.ctx.deps.cache.truncate(this.ctx.id, size));
      this.ctx.epoch++;
    } else {
      // Set once, not again after the cut above: a write that grew the image while the
      // cache was being cut must keep its new size.
      this.ctx.remote.grow(size);
    }
    this.ctx.mtime = this.ctx.now();
    this.notify();
  }
}
