/* The write side of the cache: grains filled from Azure, writes landing in grain files (marking sectors valid and
 * dirty, bumping generations), uploads marking grains clean again, and truncates cutting
 * grains. The grain states are drawn at the top of cache.ts, which owns the parts this
 * works on (CacheParts). */

import path from 'node:path';
import { BlobdiskError } from '../errors';
import { Logger } from '../log';
import { crc32 } from './crc';
import { GrainFiles } from './files';
import { Entry, GrainIndex, keyOf } from './grain-index';
import { diskError } from './power';
import { Room } from './room';
import { SECTOR, allSet, anySet, clearBitsFrom, emptyBitmap, runs, sectorSpan, sectorsOf, setBits } from './sectors';
import { Verifier } from './verify';

/** What the read and the write side of the cache share. */
export interface CacheParts {
  readonly grainSize: number;
  readonly sizeBytes: number;
  readonly index: GrainIndex;
  readonly files: GrainFiles;
  readonly verifier: Verifier;
  readonly room: Room;
  /** Grains not cached whose files prepare() opened ahead of a sequential writer. */
  readonly ahead: Map<string, string>;
  /** A generation no grain had before (see GrainCache). */
  nextGen(): number;
  /** Records the entry in the grain map. */
  persist(entry: Entry): void;
  /** The time (the cache's clock). */
  now(): number;
  /** Drops grains: their entries, rows and files. */
  drop(entries: Entry[]): Promise<void>;
  /** The whole grain as its file holds it. */
  readWhole(imageId: number, idx: number): Promise<Buffer>;
  /** Brings the grain states up to date with writes the FUSE binding served natively. */
  settle(): void;
  readonly log: Logger;
}

export class GrainWrites {
  constructor(private readonly parts: CacheParts) {}

  /** Takes a grain's whole content as fetched from Azure. Sectors the cache already holds
   *  (written locally) are kept; the others are taken from `data`. Returns false when the
   *  cache had no room, or `stillValid()` says the content went stale while it was being
   *  stored (the grain is then not cached). `checksum`, when given, is the CRC-32 of `data`
   *  (a fetch takes it as the bytes arrive); otherwise it is taken here. */
  async fill(imageId: number, idx: number, data: Buffer, stillValid: () => boolean = () => true, checksum?: number): Promise<boolean> {
    const key = keyOf(imageId, idx);
    const entry = this.parts.index.get(key);
    if (!entry) {
      if (!(await this.parts.room.make(this.parts.grainSize, false))) return false;
      try {
        if (this.parts.index.has(key)) return await this.fill(imageId, idx, data, stillValid, checksum);
        const file = this.parts.files.fileOf(imageId, idx);
        await this.parts.files.ensureDir(path.dirname(file));
        // Only callers without a fetch (zeros, tests) leave the checksum to be taken here.
        const crc = checksum ?? crc32(data);
        // Write aside and rename, so a reader holding the old file never sees a half-written
        // one. Neither is synced: a clean grain's checksum catches a file a power loss tore,
        // and the fsync that makes it dirty data's home syncs the file and its directory.
        const disk = this.parts.files.disk;
        const partial = `${file}.partial`;
        await disk.writeFile(partial, data);
        await this.parts.files.removal(key);
        await disk.rename(partial, file);
        this.parts.files.entered(path.dirname(file));
        this.parts.files.close(key);
        if (this.parts.index.has(key)) return true; // a write arrived meanwhile; it owns the grain now
        if (!stillValid()) {
          // The image was cut (or changed) while the grain was on its way: it is stale.
          await disk.rm(file);
          return false;
        }
        this.parts.ahead.delete(key);
        const fresh: Entry = { imageId, idx, checksum: crc, valid: null, dirty: null, gen: this.parts.nextGen(), uploadedGen: -1, verified: true, unsynced: false, dirtySince: 0 };
        this.parts.index.insert(fresh);
        this.parts.persist(fresh);
        return true;
      } finally {
        this.parts.room.release(this.parts.grainSize);
      }
    }
    if (entry.valid === null) return true;
    if (!stillValid()) return false;
    const holes = runs(entry.valid.map((b) => ~b & 0xff) as Buffer, sectorsOf(this.parts.grainSize));
    await this.parts.files.withFile(imageId, idx, async (handle) => {
      for (const [a, b] of holes) await handle.write(data, a * SECTOR, (b - a) * SECTOR, a * SECTOR);
    });
    // Dropped meanwhile (a truncate): its file and row are gone and must stay gone.
    if (this.parts.index.get(key) !== entry) return false;
    entry.valid = null;
    if (!entry.dirty) entry.checksum = crc32(await this.parts.readWhole(imageId, idx));
    entry.verified = true;
    // Newly valid sectors of a dirty grain are part of what its next fsync syncs.
    if (entry.dirty) entry.unsynced = true;
    this.parts.persist(entry);
    return true;
  }

  /** Writes `data` at `offset` within the grain and marks it dirty. Sectors the write only
   *  partly covers must already be valid (the image fetches them first). Waits up to
   *  `waitMs` for room when the cache is full of dirty data, then fails with no-space. */
  async write(imageId: number, idx: number, offset: number, data: Buffer, waitMs: number): Promise<void> {
    await this.landing(imageId, idx, waitMs, (entry, fd) => this.land(entry, fd, offset, data));
  }

  /** Makes the whole grain zeros, written and dirty, without writing a byte: its file is cut
   *  to nothing and grown back, so it holds no blocks (a guest's discard of gigabytes costs
   *  the local disk nothing; the upload sends Clear Pages). Waits for room as write() does. */
  async zeroGrain(imageId: number, idx: number, waitMs: number): Promise<void> {
    await this.landing(imageId, idx, waitMs, (entry, fd) => this.cut(entry, fd));
  }

  /** Runs `land` on the grain's open file, the grain cached (made room for when it was not). */
  private async landing(imageId: number, idx: number, waitMs: number, land: (entry: Entry, fd: number) => void): Promise<void> {
    const key = keyOf(imageId, idx);
    let entry = this.parts.index.get(key);
    if (!entry) {
      if (!(await this.parts.room.make(this.parts.grainSize, true, waitMs))) {
        throw new BlobdiskError('no-space', `the cache is full of data not yet uploaded (${this.parts.index.stats.dirtyBytes} bytes); the upload to Azure is not keeping up or Azure is unreachable`);
      }
      this.parts.room.release(this.parts.grainSize);
      entry = this.parts.index.get(key) ?? this.newWritten(imageId, idx);
    }
    // Bump the generation before the bytes land: an upload that read the grain while this
    // write was under way then cannot mark it clean.
    entry.gen = this.parts.nextGen();
    // Still clean until it has landed: evicted while its file opens, the acknowledged
    // bytes would go to a removed file and an entry no longer in the cache.
    entry.landing = (entry.landing ?? 0) + 1;
    try {
      await this.parts.files.withFile(imageId, idx, (handle) => land(entry, handle.fd));
    } finally {
      entry.landing--;
    }
  }

  /** write() at once, without a turn through promises, when the grain's file is open and
   *  the grain cached, or not cached but prepared with room to spare; false (nothing done)
   *  otherwise. */
  writeNow(imageId: number, idx: number, offset: number, data: Buffer): boolean {
    const key = keyOf(imageId, idx);
    let entry = this.parts.index.get(key);
    // A cached grain whose file left the open files (a random writer touches more grains
    // than are kept open) is opened synchronously: microseconds, against a turn through
    // the thread pool for the open and another for the write.
    let fd = this.parts.files.fd(key) ?? (entry ? this.parts.files.syncFd(key, entry) : undefined);
    if (!entry) {
      if (this.parts.room.free < this.parts.grainSize) return false;
      if (fd !== undefined) {
        if (!this.parts.ahead.has(key)) return false;
        entry = this.newWritten(imageId, idx);
      } else {
        // A grain not cached: its file is created now (whole sectors need nothing of Azure's).
        if (this.parts.files.isOpen(key) || this.parts.files.removal(key)) return false;
        const fresh = this.newWritten(imageId, idx);
        fd = this.parts.files.createSync(key, fresh);
        if (fd === undefined) {
          this.parts.index.delete(key, fresh);
          return false;
        }
        entry = fresh;
      }
    }
    if (fd === undefined) return false;
    entry.gen = this.parts.nextGen();
    this.land(entry, fd, offset, data);
    return true;
  }

  /** Writes the FUSE binding landed natively in the grain's file at `ranges` (offset,
   *  length): their sectors are written, as land() records them. The grain is cached: a
   *  grain is revoked, and its writes taken in, before it leaves the cache (logged if not). */
  landedNatively(imageId: number, idx: number, ranges: readonly (readonly [number, number])[]): void {
    const entry = this.parts.index.get(keyOf(imageId, idx));
    if (!entry) {
      this.parts.log.error(`a write to grain ${idx} of image ${imageId} landed after the grain left the cache; its bytes are not uploaded`);
      return;
    }
    for (const [offset, length] of ranges) this.record(entry, offset, length, false);
    this.parts.persist(entry);
  }

  /** A grain that a write is about to land in, not cached until now. */
  private newWritten(imageId: number, idx: number): Entry {
    const entry: Entry = { imageId, idx, checksum: null, valid: emptyBitmap(this.parts.grainSize), dirty: null, gen: this.parts.nextGen(), uploadedGen: -1, verified: true, unsynced: false, dirtySince: 0 };
    this.parts.ahead.delete(keyOf(imageId, idx));
    this.parts.index.insert(entry);
    return entry;
  }

  /** Opens the file of grain `idx` ahead of a sequential writer, so that the writer's first
   *  write there lands at once (writeNow) instead of waiting for the file to open. The grain
   *  is not cached until a write lands in it; an unused file stays empty (and is reused by
   *  the grain later) and is removed at close(). */
  prepare(imageId: number, idx: number): void {
    const key = keyOf(imageId, idx);
    if (this.parts.index.has(key) || this.parts.files.isOpen(key)) return;
    this.parts.ahead.set(key, this.parts.files.fileOf(imageId, idx));
    this.parts.files.withFile(imageId, idx, () => undefined).catch(() => this.parts.ahead.delete(key));
  }

  /** The bytes of a write into the grain's file, then its sectors valid and dirty in the grain map. */
  private land(entry: Entry, fd: number, offset: number, data: Buffer): void {
    // One synchronous pwrite into the page cache costs less than a round trip through the
    // thread pool, and the FUSE request waits for it either way.
    let written = 0;
    try {
      while (written < data.length) {
        const n = this.parts.files.disk.writeSync(fd, data, written, data.length - written, offset + written);
        if (n <= 0) throw Object.assign(new Error('short write'), { code: 'EIO' });
        written += n;
      }
    } catch (e) {
      if (written > 0) this.landedPart(entry, offset, written);
      throw diskError('a write', e);
    }
    this.record(entry, offset, data.length);
  }

  /** The grain's file cut to nothing and grown back to a grain of zeros (see zeroGrain). */
  private cut(entry: Entry, fd: number): void {
    const disk = this.parts.files.disk;
    const g = this.parts.grainSize;
    try {
      disk.ftruncateSync(fd, 0);
    } catch (e) {
      throw diskError('a write', e);
    }
    try {
      disk.ftruncateSync(fd, g);
    } catch (e) {
      // Cut but not grown: the file reads as zeros all the same (reads past its end do).
      this.landedPart(entry, 0, g);
      throw diskError('a write', e);
    }
    this.record(entry, 0, g);
  }

  /** A write that failed after part of it reached the file: a clean grain no longer matches
   *  its checksum (nor Azure) and goes; a dirty one records the part as written (a failed
   *  write may leave its range partly written, as on any disk). */
  private landedPart(entry: Entry, offset: number, written: number): void {
    if (entry.dirty) {
      this.record(entry, offset, written);
      return;
    }
    this.parts.drop([entry]).catch(() => undefined);
  }

  /** Sectors [offset, offset + length) of the grain are written: valid, dirty, unsynced. */
  private record(entry: Entry, offset: number, length: number, persist = true): void {
    const [from, to] = sectorSpan(offset, offset + length);
    if (entry.valid) {
      setBits(entry.valid, from, to);
      if (allSet(entry.valid, 0, sectorsOf(this.parts.grainSize))) entry.valid = null;
    }
    if (!entry.dirty) {
      entry.dirty = emptyBitmap(this.parts.grainSize);
      entry.dirtySince = this.parts.now();
      this.parts.index.stats.dirtyBytes += this.parts.grainSize;
    }
    setBits(entry.dirty, from, to);
    entry.checksum = null;
    entry.unsynced = true;
    // And once more now that the bits are set: an upload that saw the bitmap without them
    // (while the bytes were landing) must not mark the grain clean either.
    entry.gen = this.parts.nextGen();
    if (persist) this.parts.persist(entry);
  }

  /** After an upload of the grain as it was at generation `gen` (content `data`, which
   *  must not change until this settles): clean again unless it was written meanwhile.
   *  The checksum of `data` in shared memory is taken in the worker thread: on the event
   *  loop it cost a drain a tenth of its time. */
  async markUploaded(imageId: number, idx: number, gen: number, data: Buffer): Promise<void> {
    const key = keyOf(imageId, idx);
    const before = this.parts.index.get(key);
    const crc = before?.dirty && before.gen === gen ? await this.parts.verifier.crc.of(data) : undefined;
    // Writes served natively until now count: one that landed after `data` was read makes the grain stay dirty.
    this.parts.settle();
    const entry = this.parts.index.get(key);
    if (!entry) return;
    entry.uploadedGen = Math.max(entry.uploadedGen, gen);
    if (!entry.dirty || entry.gen !== gen || crc === undefined) return;
    entry.dirty = null;
    entry.checksum = crc;
    entry.verified = true;
    this.parts.index.stats.dirtyBytes -= this.parts.grainSize;
    this.parts.persist(entry);
  }

  /** The image now ends at `size`: grains past it go (dirty or not), the grain holding the
   *  end is cut there (its file beyond reads as zeros, which is what a later grow shows). */
  async truncate(imageId: number, size: number): Promise<void> {
    const g = this.parts.grainSize;
    const gone: Entry[] = [];
    for (const e of this.parts.index.values()) if (e.imageId === imageId && e.idx * g >= size) gone.push(e);
    await this.parts.drop(gone);
    const boundary = this.parts.index.get(keyOf(imageId, Math.floor(size / g)));
    if (!boundary) return;
    const cut = size % g;
    boundary.landing = (boundary.landing ?? 0) + 1; // not evicted while it is cut
    try {
      await this.parts.files.withFile(imageId, boundary.idx, (handle) => handle.truncate(cut));
      const firstGone = Math.ceil(cut / SECTOR);
      if (boundary.valid) setBits(boundary.valid, firstGone, sectorsOf(g)); // zeros now, known
      if (boundary.dirty) {
        clearBitsFrom(boundary.dirty, firstGone);
        if (cut % SECTOR !== 0) setBits(boundary.dirty, firstGone - 1, firstGone);
      } else if (cut % SECTOR !== 0) {
        boundary.dirty = emptyBitmap(g);
        boundary.dirtySince = this.parts.now();
        this.parts.index.stats.dirtyBytes += g;
        setBits(boundary.dirty, firstGone - 1, firstGone);
      }
      if (boundary.dirty && !anySet(boundary.dirty)) {
        boundary.dirty = null;
        this.parts.index.stats.dirtyBytes -= g;
      }
      boundary.checksum = boundary.dirty ? null : crc32(await this.parts.readWhole(imageId, boundary.idx));
      boundary.gen = this.parts.nextGen();
      boundary.unsynced = true;
      this.parts.persist(boundary);
    } finally {
      boundary.landing--;
    }
  }

  /** Drops what a crash may have left past the image's recorded end `size`: a write that
   *  grew the image may have died before its new size was recorded (it was never
   *  acknowledged), and its grain would otherwise never count as uploaded. */
  async clipPast(imageId: number, size: number): Promise<void> {
    const g = this.parts.grainSize;
    const beyond = [...this.parts.index.values()].some((e) => e.imageId === imageId && e.idx * g >= size);
    const boundary = this.parts.index.get(keyOf(imageId, Math.floor(size / g)));
    const firstPast = Math.ceil((size % g) / SECTOR);
    const past = boundary?.dirty ? runs(boundary.dirty, sectorsOf(g)).some(([, to]) => to > firstPast) : false;
    if (beyond || past) await this.truncate(imageId, size);
  }
}
