/* The local grain cache: one file per grain under <dir>/grains/<image id>/<grain index>,
 * grain-size bytes long (holes and the part past the image's end read as zeros), bounded
 * by the cache size.
 *
 * A grain's state is two sector bitmaps (see sectors.ts) and a generation:
 *   valid  which sectors the file holds (null: all of them)
 *   dirty  which sectors wait for upload (null: none, the grain is clean)
 *   gen    bumped by every write, so an upload that raced with a write can tell
 *
 *   state            event                               next state
 *   absent           fetched from Azure (fill)           clean, complete, checksummed
 *   absent/clean     write                               dirty (valid ⊇ dirty)
 *   clean, partial   fetched from Azure (fill)           clean, complete (only invalid sectors written)
 *   dirty            uploaded, gen unchanged             clean (checksum of the file)
 *   dirty            uploaded, written again meanwhile   dirty (uploaded again later)
 *   clean            evicted (LRU) / blob changed        absent
 *   dirty            never evicted; dropped only by truncate or delete
 *
 * Clean grains carry a CRC-32, checked the first time this process reads the grain, so a
 * file torn by a crash is dropped and fetched again instead of served. Dirty grains are
 * never dropped: after a crash they are uploaded as they are (data written since the last
 * fsync may be either old or new, as on any disk). The index lives in memory, in LRU
 * order, rebuilt from the grain map at open; access times go back in batches.
 *
 * A sequential reader's grains are served by readNow(): one synchronous pread straight
 * into the FUSE request's buffer, after prefetch() got the file into the page cache. That
 * is the bare FUSE filesystem's single copy; an asynchronous read costs a thread-pool round
 * trip, and reading a grain into memory ahead of the reader costs a second copy of it. */

import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { BlobdiskError } from '../errors';
import { GrainMap, GrainRow } from '../grainmap/grainmap';
import { Logger } from '../log';
import { CacheOptions } from '../options';
import { Crc32, FileCheckError, crc32 } from './crc';
import { SECTOR, allSet, anySet, clearBitsFrom, countBits, emptyBitmap, runs, sectorSpan, sectorsOf, setBits } from './sectors';

const TOUCH_FLUSH_MS = 5_000;
const MAX_OPEN_FILES = 128;
/** Files prefetch() opens for readNow(), at most: a few read-ahead windows. */
const MAX_READ_FILES = 256;
const ROOM_POLL_MS = 50;

interface Entry {
  readonly imageId: number;
  readonly idx: number;
  checksum: number | null;
  valid: Buffer | null;
  dirty: Buffer | null;
  gen: number;
  /** Generation of the last upload of this grain (-1: none in this process). */
  uploadedGen: number;
  verified: boolean;
  /** Written since the last fsync of its image. */
  unsynced: boolean;
  /** When the grain last went from clean to dirty (ms), for "oldest dirty age". */
  dirtySince: number;
  /** Writes landing in it: until they are done it is not evicted, even while clean. */
  landing?: number;
}

/** What the image and the flusher may know of a grain. */
export interface GrainState {
  readonly valid: Buffer | null;
  readonly dirty: Buffer | null;
  readonly gen: number;
  readonly uploadedGen: number;
}

export interface CacheStats {
  usedBytes: number;
  dirtyBytes: number;
  grains: number;
  evictions: number;
  corruptions: number;
}

const keyOf = (imageId: number, idx: number): string => `${imageId}:${idx}`;

/** An open grain file. It closes once it has left the open files and nobody uses it: a
 *  descriptor closed under a user could be reused by another file and take its bytes, and
 *  one kept open for long after would pile up under a random writer (thousands of opens a
 *  second). */
interface OpenFile {
  readonly handle: Promise<fsp.FileHandle>;
  users: number;
  closing: boolean;
}

function closeFileNow(file: OpenFile): void {
  file.handle.then((h) => h.close()).catch(() => undefined);
}

/** A grain file prefetch() opened for reading, for as long as `entry` is the grain's: a
 *  grain made anew (dropped, then fetched or written again) has a new Entry, and its file
 *  may be a new one. Used and closed only synchronously, so no reader can see its
 *  descriptor reused by another file. */
interface ReadFile {
  readonly fd: number;
  readonly entry: Entry;
}

export class GrainCache {
  private readonly lru = new Map<string, Entry>();
  private readonly touched = new Map<string, { imageId: number; idx: number; at: number }>();
  private readonly files = new Map<string, OpenFile>();
  /** Descriptors of the files in `files` whose open has finished, for writeNow() and
   *  readNow(). A descriptor leaves with its file's entry there, before it is closed: its
   *  number may then belong to another file. */
  private readonly fds = new Map<string, number>();
  /** Grains not cached whose files prepare() opened ahead of a sequential writer. */
  private readonly ahead = new Map<string, string>();
  /** Files prefetch() opened for readNow(), oldest first. */
  private readonly readFiles = new Map<string, ReadFile>();
  /** Files of dropped grains whose removal is under way. */
  private readonly removing = new Map<string, Promise<void>>();
  private readonly dirs = new Set<string>();
  /** Checksum checks under way: concurrent first reads of a grain share one whole read. */
  private readonly verifying = new Map<string, Promise<Buffer | undefined>>();
  private readonly crc = new Crc32();
  /** Room makeRoom() promised to grains whose files are still being written (not yet in usedBytes). */
  private reserved = 0;
  private readonly timer: NodeJS.Timeout;
  private readonly grainSize: number;
  readonly stats: CacheStats = { usedBytes: 0, dirtyBytes: 0, grains: 0, evictions: 0, corruptions: 0 };

  /** Generations come from one counter for the whole cache, so a grain dropped and
   *  made anew (a truncate, then a write) never repeats a generation an upload of its
   *  old content saw, and that upload cannot mark the new content clean. */
  private lastGen = 0;
  private nextGen(): number {
    return ++this.lastGen;
  }

  /** The bound of the cache (--cache-size). */
  get sizeBytes(): number {
    return this.options.sizeBytes;
  }

  constructor(
    private readonly options: CacheOptions,
    private readonly map: GrainMap,
    private readonly log: Logger,
  ) {
    this.grainSize = options.grainSize;
    fs.mkdirSync(path.join(options.dir, 'grains'), { recursive: true });
    for (const row of map.allGrains()) {
      this.insert({
        imageId: row.imageId, idx: row.idx, checksum: row.checksum, valid: row.valid, dirty: row.dirty,
        gen: 0, uploadedGen: -1, verified: false, unsynced: false, dirtySince: row.dirty ? row.lastAccess : 0,
      });
    }
    this.timer = setInterval(() => this.flushTouches(), TOUCH_FLUSH_MS);
    this.timer.unref();
  }

  private insert(entry: Entry): void {
    this.lru.set(keyOf(entry.imageId, entry.idx), entry);
    this.stats.usedBytes += this.grainSize;
    if (entry.dirty) this.stats.dirtyBytes += this.grainSize;
    this.stats.grains++;
  }

  private fileOf(imageId: number, idx: number): string {
    return path.join(this.options.dir, 'grains', String(imageId), String(idx));
  }

  private persist(e: Entry): void {
    const row: GrainRow = {
      imageId: e.imageId, idx: e.idx, length: this.grainSize, checksum: e.checksum, valid: e.valid, dirty: e.dirty,
      lastAccess: e.dirty ? e.dirtySince : Date.now(),
    };
    this.map.putGrain(row);
  }

  has(imageId: number, idx: number): boolean {
    return this.lru.has(keyOf(imageId, idx));
  }

  state(imageId: number, idx: number): GrainState | undefined {
    return this.lru.get(keyOf(imageId, idx));
  }

  /** True when the cache holds every sector of [start, end) of the grain. */
  covers(imageId: number, idx: number, start: number, end: number): boolean {
    const e = this.lru.get(keyOf(imageId, idx));
    if (!e) return false;
    if (e.valid === null) return true;
    const [from, to] = sectorSpan(start, end);
    return allSet(e.valid, from, to);
  }

  /** Indices of an image's dirty grains, ascending. */
  dirtyGrains(imageId: number): number[] {
    const out: number[] = [];
    for (const e of this.lru.values()) if (e.imageId === imageId && e.dirty) out.push(e.idx);
    return out.sort((a, b) => a - b);
  }

  /** Dirty bytes of one image and when its oldest dirty grain became dirty (0: none). */
  dirtyOf(imageId: number): { bytes: number; since: number } {
    let bytes = 0;
    let since = 0;
    for (const e of this.lru.values()) {
      if (e.imageId !== imageId || !e.dirty) continue;
      bytes += countBits(e.dirty) * SECTOR;
      if (since === 0 || e.dirtySince < since) since = e.dirtySince;
    }
    return { bytes, since };
  }

  /** Copies [offset, offset + length) of a cached grain into `target` at `targetOffset`.
   *  The caller checked covers(). Returns false when the grain failed its checksum (it is
   *  then dropped), vanished, or was written while its checksum was being checked. */
  async read(imageId: number, idx: number, offset: number, length: number, target: Buffer, targetOffset: number): Promise<boolean> {
    const key = keyOf(imageId, idx);
    const entry = this.lru.get(key);
    if (!entry) return false;
    this.lru.delete(key);
    this.lru.set(key, entry);
    this.touched.set(key, { imageId, idx, at: Date.now() });
    try {
      const checksum = entry.checksum;
      if (this.needsCheck(entry) && checksum !== null) {
        if (offset === 0 && length === this.grainSize && !this.verifying.has(key)) {
          // A whole grain: check it where it lands, no second buffer.
          await this.readFull(imageId, idx, target, targetOffset);
          return await this.check(key, entry, checksum, target.subarray(targetOffset, targetOffset + length));
        }
        let verifying = this.verifying.get(key);
        if (!verifying) {
          verifying = this.readFull(imageId, idx, Buffer.allocUnsafe(this.grainSize), 0)
            .then(async (data) => ((await this.check(key, entry, checksum, data)) ? data : undefined))
            .finally(() => this.verifying.delete(key));
          this.verifying.set(key, verifying);
        }
        const data = await verifying;
        if (!data) return false;
        data.copy(target, targetOffset, offset, offset + length);
        return true;
      }
      const { bytesRead } = await this.withFile(imageId, idx, (h) => h.read(target, targetOffset, length, offset));
      if (bytesRead < length) target.fill(0, targetOffset + bytesRead, targetOffset + length);
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      this.stats.corruptions++;
      this.log.warn(`cached grain ${idx} of image ${imageId} vanished from the cache directory; fetching it again`);
      if (!entry.dirty) await this.drop([entry]);
      return false;
    }
  }

  /** Whether the first read of the grain in this process must check its checksum. */
  private needsCheck(entry: Entry): boolean {
    return !entry.verified && !entry.dirty && entry.checksum !== null;
  }

  /** Copies [offset, offset + length) of a cached grain into `target` at `targetOffset`
   *  with one synchronous pread, when its file is open and nothing needs checking first;
   *  false otherwise (read() then does it). The caller checked covers(). It blocks the
   *  event loop until the bytes are there: call it for grains prefetch() brought into the
   *  page cache, not for every hit. */
  readNow(imageId: number, idx: number, offset: number, length: number, target: Buffer, targetOffset: number): boolean {
    const key = keyOf(imageId, idx);
    const entry = this.lru.get(key);
    if (!entry || this.needsCheck(entry)) return false;
    const own = this.readFiles.get(key);
    const fd = own?.entry === entry ? own.fd : this.fds.get(key);
    if (fd === undefined) return false;
    this.lru.delete(key);
    this.lru.set(key, entry);
    this.touched.set(key, { imageId, idx, at: Date.now() });
    let done = 0;
    while (done < length) {
      const n = fs.readSync(fd, target, targetOffset + done, length - done, offset + done);
      if (n === 0) break;
      done += n;
    }
    if (done < length) target.fill(0, targetOffset + done, targetOffset + length);
    return true;
  }

  /** Starts the checksum worker now, so that the first reads after a mount do not wait
   *  for a thread to start. */
  startWorker(): void {
    this.crc.startNow();
  }

  /** Gets a cached grain ready for readNow(): its checksum checked (on its first read in
   *  this process; the worker reads the file, which leaves it in the page cache), or else
   *  its start read by the worker, the kernel reading the rest ahead, and its file open for
   *  reading. False when readNow() cannot serve it: the grain is gone or failed its check
   *  (it is then dropped), or its file could not be opened (read() then finds out and says
   *  so). */
  async prefetch(imageId: number, idx: number): Promise<boolean> {
    const key = keyOf(imageId, idx);
    const entry = this.lru.get(key);
    if (!entry) return false;
    const file = this.fileOf(imageId, idx);
    if (this.needsCheck(entry)) {
      try {
        if (!(await this.checkFile(key, entry))) return false;
      } catch {
        return false;
      }
      if (this.lru.get(key) !== entry || this.needsCheck(entry)) return false;
    } else {
      // No answer to wait for: the reader comes to this grain a read-ahead window later.
      this.crc.warm(file, this.grainSize);
    }
    if (this.readFiles.get(key)?.entry === entry) return true;
    this.closeReadFile(key);
    let fd: number;
    try {
      // Synchronous: an open takes microseconds (once the file's directory entry and inode
      // are in memory), less than a turn through the thread pool.
      fd = fs.openSync(file, 'r');
    } catch {
      return false;
    }
    this.readFiles.set(key, { fd, entry });
    while (this.readFiles.size > MAX_READ_FILES) {
      const oldest = this.readFiles.keys().next().value;
      if (oldest === undefined) break;
      this.closeReadFile(oldest);
    }
    return true;
  }

  private closeReadFile(key: string): void {
    const file = this.readFiles.get(key);
    if (!file) return;
    this.readFiles.delete(key);
    try {
      fs.closeSync(file.fd);
    } catch {
      // Closing a descriptor open for reading loses nothing.
    }
  }

  /** Checks a grain's file against its checksum in the worker thread; see check(). */
  private async checkFile(key: string, entry: Entry): Promise<boolean> {
    const checksum = entry.checksum;
    if (checksum === null) return true;
    let crc: number;
    try {
      crc = await this.crc.ofFile(this.fileOf(entry.imageId, entry.idx), this.grainSize);
    } catch (e) {
      if (!(e instanceof FileCheckError) || e.code !== 'ENOENT') throw e;
      if (this.lru.get(key) !== entry || entry.dirty) return false;
      this.stats.corruptions++;
      this.log.warn(`cached grain ${entry.idx} of image ${entry.imageId} vanished from the cache directory; fetching it again`);
      await this.drop([entry]);
      return false;
    }
    return this.judge(key, entry, checksum, crc);
  }

  /** Whether the grain's checksum is checked (or it has none to check): false until the
   *  first read of a clean grain in this process. */
  checked(imageId: number, idx: number): boolean {
    const entry = this.lru.get(keyOf(imageId, idx));
    return entry !== undefined && !this.needsCheck(entry);
  }

  /** Whether `data`, read from the file of `entry` while it carried `checksum`, passes;
   *  a grain that fails is dropped. One written or replaced meanwhile is left for the
   *  caller to read again. */
  private async check(key: string, entry: Entry, checksum: number, data: Buffer): Promise<boolean> {
    if (this.lru.get(key) !== entry || entry.dirty || entry.checksum !== checksum) return false;
    if (entry.verified) return true;
    return this.judge(key, entry, checksum, await this.crc.of(data));
  }

  /** Whether the grain passes, its content having had CRC `crc` while it carried
   *  `checksum` (see check()). */
  private async judge(key: string, entry: Entry, checksum: number, crc: number): Promise<boolean> {
    if (this.lru.get(key) !== entry || entry.dirty || entry.checksum !== checksum) return false;
    if (entry.verified) return true;
    if (crc !== checksum) {
      this.stats.corruptions++;
      this.log.warn(`cached grain ${entry.idx} of image ${entry.imageId} failed its checksum; fetching it again`);
      await this.drop([entry]);
      return false;
    }
    entry.verified = true;
    return true;
  }

  /** Reads the whole grain file into `target` at `at` (grain-size bytes; the part the file
   *  lacks reads as zeros). Returns `target`. */
  private async readFull(imageId: number, idx: number, target: Buffer, at: number): Promise<Buffer> {
    const done = await this.withFile(imageId, idx, async (handle) => {
      let got = 0;
      while (got < this.grainSize) {
        const { bytesRead } = await handle.read(target, at + got, this.grainSize - got, got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      return got;
    });
    if (done < this.grainSize) target.fill(0, at + done, at + this.grainSize);
    return target;
  }

  /** The whole grain as the file holds it (grain-size bytes; holes and the missing tail as zeros). */
  async readWhole(imageId: number, idx: number): Promise<Buffer> {
    return this.readFull(imageId, idx, Buffer.allocUnsafe(this.grainSize), 0);
  }

  /** Runs `fn` on the open file of grain `idx` (opened, or created empty, when needed);
   *  the file stays open until `fn` is done. */
  private async withFile<T>(imageId: number, idx: number, fn: (handle: fsp.FileHandle) => T | Promise<T>): Promise<T> {
    const file = this.openFile(imageId, idx);
    file.users++;
    try {
      return await fn(await file.handle);
    } finally {
      file.users--;
      if (file.closing && file.users === 0) closeFileNow(file);
    }
  }

  private openFile(imageId: number, idx: number): OpenFile {
    const key = keyOf(imageId, idx);
    const known = this.files.get(key);
    if (known) {
      this.files.delete(key);
      this.files.set(key, known);
      return known;
    }
    const name = this.fileOf(imageId, idx);
    // A file still being removed (its grain was just dropped) must be gone before the new
    // grain's file is opened, or the removal would unlink the new one's bytes.
    const removing = this.removing.get(key) ?? Promise.resolve();
    const handle = removing.then(() => this.ensureDir(path.dirname(name))).then(() => fsp.open(name, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600));
    const file: OpenFile = { handle, users: 0, closing: false };
    handle.then(
      (h) => {
        if (this.files.get(key) === file) this.fds.set(key, h.fd);
      },
      () => {
        if (this.files.get(key) === file) this.files.delete(key);
      },
    );
    this.files.set(key, file);
    while (this.files.size > MAX_OPEN_FILES) {
      const oldest = this.files.keys().next().value;
      if (oldest === undefined) break;
      this.closeFile(oldest);
    }
    return file;
  }

  private ensureDir(dir: string): Promise<void> {
    if (this.dirs.has(dir)) return Promise.resolve();
    return fsp.mkdir(dir, { recursive: true }).then(() => void this.dirs.add(dir));
  }

  private closeFile(key: string): void {
    const file = this.files.get(key);
    if (!file) return;
    this.files.delete(key);
    this.fds.delete(key);
    file.closing = true;
    if (file.users === 0) closeFileNow(file);
  }

  /** Takes a grain's whole content as fetched from Azure. Sectors the cache already holds
   *  (written locally) are kept; the others are taken from `data`. Returns false when the
   *  cache had no room, or `stillValid()` says the content went stale while it was being
   *  stored (the grain is then not cached). `checksum`, when given, is the CRC-32 of `data`
   *  (a fetch takes it as the bytes arrive); otherwise it is taken here. */
  async fill(imageId: number, idx: number, data: Buffer, stillValid: () => boolean = () => true, checksum?: number): Promise<boolean> {
    const key = keyOf(imageId, idx);
    const entry = this.lru.get(key);
    if (!entry) {
      if (!(await this.makeRoom(this.grainSize, false))) return false;
      try {
        if (this.lru.has(key)) return await this.fill(imageId, idx, data, stillValid, checksum);
        const file = this.fileOf(imageId, idx);
        await this.ensureDir(path.dirname(file));
        // Only callers without a fetch (zeros, tests) leave the checksum to be taken here.
        const crc = checksum ?? crc32(data);
        // Write aside and rename, so a reader holding the old file never sees a half-written one.
        const partial = `${file}.partial`;
        await fsp.writeFile(partial, data);
        await this.removing.get(key);
        await fsp.rename(partial, file);
        this.closeFile(key);
        if (this.lru.has(key)) return true; // a write arrived meanwhile; it owns the grain now
        if (!stillValid()) {
          // The image was cut (or changed) while the grain was on its way: it is stale.
          await fsp.rm(file, { force: true });
          return false;
        }
        this.ahead.delete(key);
        const fresh: Entry = { imageId, idx, checksum: crc, valid: null, dirty: null, gen: this.nextGen(), uploadedGen: -1, verified: true, unsynced: false, dirtySince: 0 };
        this.insert(fresh);
        this.persist(fresh);
        return true;
      } finally {
        this.reserved -= this.grainSize;
      }
    }
    if (entry.valid === null) return true;
    if (!stillValid()) return false;
    const holes = runs(entry.valid.map((b) => ~b & 0xff) as Buffer, sectorsOf(this.grainSize));
    await this.withFile(imageId, idx, async (handle) => {
      for (const [a, b] of holes) await handle.write(data, a * SECTOR, (b - a) * SECTOR, a * SECTOR);
    });
    // Dropped meanwhile (a truncate): its file and row are gone and must stay gone.
    if (this.lru.get(key) !== entry) return false;
    entry.valid = null;
    if (!entry.dirty) entry.checksum = crc32(await this.readWhole(imageId, idx));
    entry.verified = true;
    this.persist(entry);
    return true;
  }

  /** Writes `data` at `offset` within the grain and marks it dirty. Sectors the write only
   *  partly covers must already be valid (the image fetches them first). Waits up to
   *  `waitMs` for room when the cache is full of dirty data, then fails with ENOSPC. */
  async write(imageId: number, idx: number, offset: number, data: Buffer, waitMs: number): Promise<void> {
    const key = keyOf(imageId, idx);
    let entry = this.lru.get(key);
    if (!entry) {
      if (!(await this.makeRoom(this.grainSize, true, waitMs))) {
        throw new BlobdiskError('ENOSPC', `the cache is full of data not yet uploaded (${this.stats.dirtyBytes} bytes); the upload to Azure is not keeping up or Azure is unreachable`);
      }
      this.reserved -= this.grainSize;
      entry = this.lru.get(key) ?? this.newWritten(imageId, idx);
    }
    // Bump the generation before the bytes land: an upload that read the grain while this
    // write was under way then cannot mark it clean.
    entry.gen = this.nextGen();
    // Still clean until it has landed: evicted while its file opens, the acknowledged
    // bytes would go to a removed file and an entry no longer in the cache.
    entry.landing = (entry.landing ?? 0) + 1;
    try {
      await this.withFile(imageId, idx, (handle) => this.land(entry, handle.fd, offset, data));
    } finally {
      entry.landing--;
    }
  }

  /** write() at once, without a turn through promises, when the grain's file is open and
   *  the grain cached, or not cached but prepared with room to spare; false (nothing done)
   *  otherwise. */
  writeNow(imageId: number, idx: number, offset: number, data: Buffer): boolean {
    const key = keyOf(imageId, idx);
    let entry = this.lru.get(key);
    const fd = this.fds.get(key);
    if (fd === undefined) return false;
    if (!entry) {
      if (!this.ahead.has(key) || this.options.sizeBytes - this.stats.usedBytes - this.reserved < this.grainSize) return false;
      entry = this.newWritten(imageId, idx);
    }
    entry.gen = this.nextGen();
    this.land(entry, fd, offset, data);
    return true;
  }

  /** A grain that a write is about to land in, not cached until now. */
  private newWritten(imageId: number, idx: number): Entry {
    const entry: Entry = { imageId, idx, checksum: null, valid: emptyBitmap(this.grainSize), dirty: null, gen: this.nextGen(), uploadedGen: -1, verified: true, unsynced: false, dirtySince: 0 };
    this.ahead.delete(keyOf(imageId, idx));
    this.insert(entry);
    return entry;
  }

  /** Opens the file of grain `idx` ahead of a sequential writer, so that the writer's first
   *  write there lands at once (writeNow) instead of waiting for the file to open. The grain
   *  is not cached until a write lands in it; an unused file stays empty (and is reused by
   *  the grain later) and is removed at close(). */
  prepare(imageId: number, idx: number): void {
    const key = keyOf(imageId, idx);
    if (this.lru.has(key) || this.files.has(key)) return;
    this.ahead.set(key, this.fileOf(imageId, idx));
    this.withFile(imageId, idx, () => undefined).catch(() => this.ahead.delete(key));
  }

  /** The bytes of a write into the grain's file, then its sectors valid and dirty in the grain map. */
  private land(entry: Entry, fd: number, offset: number, data: Buffer): void {
    // One synchronous pwrite into the page cache costs less than a round trip through the
    // thread pool, and the FUSE request waits for it either way.
    let written = 0;
    while (written < data.length) written += fs.writeSync(fd, data, written, data.length - written, offset + written);
    const [from, to] = sectorSpan(offset, offset + data.length);
    if (entry.valid) {
      setBits(entry.valid, from, to);
      if (allSet(entry.valid, 0, sectorsOf(this.grainSize))) entry.valid = null;
    }
    if (!entry.dirty) {
      entry.dirty = emptyBitmap(this.grainSize);
      entry.dirtySince = Date.now();
      this.stats.dirtyBytes += this.grainSize;
    }
    setBits(entry.dirty, from, to);
    entry.checksum = null;
    entry.unsynced = true;
    // And once more now that the bits are set: an upload that saw the bitmap without them
    // (while the bytes were landing) must not mark the grain clean either.
    entry.gen = this.nextGen();
    this.persist(entry);
  }

  /** After an upload of the grain as it was at generation `gen` (content `data`, which
   *  must not change until this settles): clean again unless it was written meanwhile.
   *  The checksum of `data` in shared memory is taken in the worker thread: on the event
   *  loop it cost a drain a tenth of its time. */
  async markUploaded(imageId: number, idx: number, gen: number, data: Buffer): Promise<void> {
    const key = keyOf(imageId, idx);
    const before = this.lru.get(key);
    const crc = before?.dirty && before.gen === gen ? await this.crc.of(data) : undefined;
    const entry = this.lru.get(key);
    if (!entry) return;
    entry.uploadedGen = Math.max(entry.uploadedGen, gen);
    if (!entry.dirty || entry.gen !== gen || crc === undefined) return;
    entry.dirty = null;
    entry.checksum = crc;
    entry.verified = true;
    this.stats.dirtyBytes -= this.grainSize;
    this.persist(entry);
  }

  /** The image now ends at `size`: grains past it go (dirty or not), the grain holding the
   *  end is cut there (its file beyond reads as zeros, which is what a later grow shows). */
  async truncate(imageId: number, size: number): Promise<void> {
    const g = this.grainSize;
    const gone: Entry[] = [];
    for (const e of this.lru.values()) if (e.imageId === imageId && e.idx * g >= size) gone.push(e);
    await this.drop(gone);
    const boundary = this.lru.get(keyOf(imageId, Math.floor(size / g)));
    if (!boundary) return;
    const cut = size % g;
    boundary.landing = (boundary.landing ?? 0) + 1; // not evicted while it is cut
    try {
      await this.withFile(imageId, boundary.idx, (handle) => handle.truncate(cut));
      const firstGone = Math.ceil(cut / SECTOR);
      if (boundary.valid) setBits(boundary.valid, firstGone, sectorsOf(g)); // zeros now, known
      if (boundary.dirty) {
        clearBitsFrom(boundary.dirty, firstGone);
        if (cut % SECTOR !== 0) setBits(boundary.dirty, firstGone - 1, firstGone);
      } else if (cut % SECTOR !== 0) {
        boundary.dirty = emptyBitmap(g);
        boundary.dirtySince = Date.now();
        this.stats.dirtyBytes += g;
        setBits(boundary.dirty, firstGone - 1, firstGone);
      }
      if (boundary.dirty && !anySet(boundary.dirty)) {
        boundary.dirty = null;
        this.stats.dirtyBytes -= g;
      }
      boundary.checksum = boundary.dirty ? null : crc32(await this.readWhole(imageId, boundary.idx));
      boundary.gen = this.nextGen();
      boundary.unsynced = true;
      this.persist(boundary);
    } finally {
      boundary.landing--;
    }
  }

  /** Drops what a crash may have left past the image's recorded end `size`: a write that
   *  grew the image may have died before its new size was recorded (it was never
   *  acknowledged), and its grain would otherwise never count as uploaded. */
  async clipPast(imageId: number, size: number): Promise<void> {
    const g = this.grainSize;
    const beyond = [...this.lru.values()].some((e) => e.imageId === imageId && e.idx * g >= size);
    const boundary = this.lru.get(keyOf(imageId, Math.floor(size / g)));
    const firstPast = Math.ceil((size % g) / SECTOR);
    const past = boundary?.dirty ? runs(boundary.dirty, sectorsOf(g)).some(([, to]) => to > firstPast) : false;
    if (beyond || past) await this.truncate(imageId, size);
  }

  /** Makes the image's written grains durable on local disk (--sync local fsync). */
  async sync(imageId: number): Promise<void> {
    const pending = [...this.lru.values()].filter((e) => e.imageId === imageId && e.unsynced);
    for (const e of pending) e.unsynced = false;
    await Promise.all(pending.map((e) => this.withFile(e.imageId, e.idx, (handle) => handle.datasync())));
    this.map.durable();
  }

  /** Evicts clean grains, least recently used first, until `bytes` more fit. For dirty
   *  data, waits up to `waitMs` for the flusher to clean grains that can then go. */
  private async makeRoom(bytes: number, forDirty: boolean, waitMs = 0): Promise<boolean> {
    const until = Date.now() + waitMs;
    for (;;) {
      const victims: Entry[] = [];
      let free = this.options.sizeBytes - this.stats.usedBytes - this.reserved;
      for (const entry of this.lru.values()) {
        if (free >= bytes) break;
        if (entry.dirty || entry.landing) continue;
        victims.push(entry);
        free += this.grainSize;
      }
      if (free >= bytes) {
        // Claim the room before awaiting: until the caller inserts its grain, concurrent
        // callers must not count the same free bytes again. The caller gives it back.
        this.reserved += bytes;
        this.stats.evictions += victims.length;
        await this.drop(victims);
        return true;
      }
      if (!forDirty || Date.now() >= until) return false;
      await new Promise((r) => setTimeout(r, ROOM_POLL_MS));
    }
  }

  private remove(key: string, entry: Entry): void {
    if (this.lru.get(key) === entry) {
      this.lru.delete(key);
      this.stats.usedBytes -= this.grainSize;
      if (entry.dirty) this.stats.dirtyBytes -= this.grainSize;
      this.stats.grains--;
    }
    this.touched.delete(key);
    this.closeFile(key);
    this.closeReadFile(key);
  }

  private async drop(entries: Entry[]): Promise<void> {
    for (const e of entries) this.remove(keyOf(e.imageId, e.idx), e);
    this.map.deleteGrains(entries);
    await Promise.all(entries.map((e) => this.removeFile(keyOf(e.imageId, e.idx), this.fileOf(e.imageId, e.idx))));
  }

  /** Removes a dropped grain's file; opening that grain's file again waits for it. */
  private removeFile(key: string, file: string): Promise<void> {
    const before = this.removing.get(key) ?? Promise.resolve();
    const removal: Promise<void> = before
      .then(() => fsp.rm(file, { force: true }))
      .finally(() => {
        if (this.removing.get(key) === removal) this.removing.delete(key);
      });
    this.removing.set(key, removal);
    return removal;
  }

  /** Drops every clean grain of an image (its blob changed remotely). Returns how many. */
  async dropClean(imageId: number): Promise<number> {
    const victims = [...this.lru.values()].filter((e) => e.imageId === imageId && !e.dirty);
    await this.drop(victims);
    return victims.length;
  }

  /** Drops every grain of an image, dirty ones too (its blob was deleted). */
  async dropImage(imageId: number): Promise<void> {
    await this.drop([...this.lru.values()].filter((e) => e.imageId === imageId));
    for (const key of this.ahead.keys()) {
      if (!key.startsWith(`${imageId}:`)) continue;
      this.ahead.delete(key);
      this.closeFile(key);
    }
    const dir = path.join(this.options.dir, 'grains', String(imageId));
    this.dirs.delete(dir);
    await fsp.rm(dir, { recursive: true, force: true });
  }

  /** Bytes of an image held in the cache. */
  cachedBytes(imageId: number): number {
    let total = 0;
    for (const e of this.lru.values()) if (e.imageId === imageId) total += this.grainSize;
    return total;
  }

  private flushTouches(): void {
    if (this.touched.size === 0) return;
    const entries = [...this.touched.values()];
    this.touched.clear();
    try {
      this.map.touch(entries);
    } catch (e) {
      this.log.warn(`could not record grain access times: ${(e as Error).message}`);
    }
  }

  /** Writes pending access times and closes files; the grain map stays open (its owner closes it). */
  async close(): Promise<void> {
    clearInterval(this.timer);
    this.flushTouches();
    const files = [...this.files.values()];
    this.files.clear();
    this.fds.clear();
    for (const key of [...this.readFiles.keys()]) this.closeReadFile(key);
    await Promise.all(files.map((f) => f.handle.then((h) => h.close()).catch(() => undefined)));
    // Files opened ahead of a writer who stopped before reaching them (still empty).
    const unused = [...this.ahead].filter(([key]) => !this.lru.has(key));
    this.ahead.clear();
    await Promise.all(unused.map(([, file]) => fsp.rm(file, { force: true }).catch(() => undefined)));
    await this.crc.close();
  }
}
