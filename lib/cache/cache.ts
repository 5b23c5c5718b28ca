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
 * file torn by a crash is dropped and fetched again instead of served. The index lives in
 * memory, in LRU order, rebuilt from the grain map at open; access times go back in batches.
 *
 * Durability (power.ts). Writes land in the page cache and the change log, never synced
 * there: a kill -9 loses none of them, a power loss any. fsync (sync) syncs what it must:
 *   unsynced  written or filled since the image's last fsync; sync fdatasyncs the file,
 *             fsyncs the directories that gained entries (new grain directories, files
 *             created or renamed into place), then commits the rows FULL together with the
 *             grain's dirty bitmap as that fsync acknowledged it (its SyncedRow), and only
 *             then clears the flag; a failed sync leaves it set and fails (EIO, ENOSPC).
 *   recorded  a SyncedRow exists: the file is not cut or removed before the removal of the
 *             row is durable (drop, truncate), so a record always names bytes of its file.
 * fsync of one image syncs that image's grains only; rows of other images that the FULL
 * commit (or any checkpoint, or the kernel's write-back) makes durable early are harmless,
 * because the next open after a reboot trusts no dirty row, only the records:
 *
 *   at open, after a reboot      record             next state
 *   clean grain                  -                  as its row says (its checksum decides)
 *   dirty grain                  none               absent: never fsynced, nothing in it
 *                                                   acknowledged; Azure's bytes are read
 *   dirty grain                  dirty sectors D    valid = dirty = D: each holds what the
 *                                                   fsync acknowledged or a later write;
 *                                                   the rest is read from Azure again
 * The rest cannot be trusted: a clean sector may have been overwritten by a write whose row
 * was lost, or have become stale when a later write to it was uploaded and then lost
 * locally; a dirty row may describe bytes that never reached the disk (uploading those as
 * they read, zeros, over good data is what this prevents). Opening in the same boot (after a
 * kill -9) trusts the rows: nothing was lost, and the dirty grains count as unsynced.
 *
 * A sequential reader's grains are served by readNow(): one synchronous pread straight
 * into the FUSE request's buffer, after prefetch() got the file into the page cache. That
 * is the bare FUSE filesystem's single copy; an asynchronous read costs a thread-pool round
 * trip, and reading a grain into memory ahead of the reader costs a second copy of it.
 *
 * The parts: grain-index.ts (the entries in LRU order, byte counts), files.ts (the grain
 * files), verify.ts (checksums before serving), room.ts (eviction and the bound),
 * writes.ts (the write side), power.ts (fsync and the open after a power loss). */

import fs from 'node:fs';
import path from 'node:path';
import { GrainMap, GrainRow } from '../grainmap/grainmap';
import { Logger } from '../log';
import { CacheOptions } from '../config';
import { Timer } from '../clock';
import { SYSTEM_TIMING, Timing } from '../tunables';
import { GrainFiles } from './files';
import { CacheStats, Entry, GrainIndex, GrainState, keyOf } from './grain-index';
import { FAST_READ, FAST_WRITE, FastTable, NativeGrains, replayJournal } from './native';
import { recover, sweep, syncGrains } from './power';
import { Room } from './room';
import { Verifier } from './verify';
import { GrainWrites } from './writes';

export type { CacheStats, GrainState };

export class GrainCache {
  private readonly index: GrainIndex;
  private readonly files: GrainFiles;
  private readonly verifier: Verifier;
  private readonly room: Room;
  private readonly writes: GrainWrites;
  private readonly touched = new Map<string, { imageId: number; idx: number; at: number }>();
  /** Grains not cached whose files prepare() opened ahead of a sequential writer. */
  private readonly ahead = new Map<string, string>();
  private readonly timer: Timer;
  private readonly settleTimer: Timer | undefined;
  private readonly grainSize: number;
  /** Grains the FUSE binding serves on its own threads (native.ts). */
  readonly native: NativeGrains;

  /** Generations come from one counter for the whole cache, so a grain dropped and
   *  made anew (a truncate, then a write) never repeats a generation an upload of its
   *  old content saw, and that upload cannot mark the new content clean. */
  private lastGen = 0;

  constructor(
    private readonly options: CacheOptions,
    private readonly map: GrainMap,
    private readonly log: Logger,
    private readonly timing: Timing = SYSTEM_TIMING,
    /** The FUSE binding's fast path table; absent: JavaScript serves every request. */
    fast?: FastTable,
  ) {
    const { tunables } = timing;
    this.grainSize = options.grainSize;
    this.index = new GrainIndex(options.grainSize);
    this.native = new NativeGrains(fast, options.grainSize, {
      wrote: (imageId, idx, ranges) => this.writes.landedNatively(imageId, idx, ranges),
      read: (imageId, idx) => this.touch(imageId, idx),
    });
    this.files = new GrainFiles(options.dir, options.grainSize, tunables.maxOpenFiles, tunables.maxReadFiles, map.disk);
    this.files.closingRead = (entry) => this.native.revoke(entry.imageId, entry.idx);
    const drop = async (entries: Entry[]): Promise<void> => void (await this.drop(entries));
    const dropClean = async (entries: Entry[]): Promise<void> => void (await this.drop(entries, true));
    this.verifier = new Verifier(this.index, this.files, options.grainSize, log, dropClean);
    this.room = new Room(this.index, options.sizeBytes, options.grainSize, dropClean, timing.clock, tunables.roomPollMs, () => this.native.settle());
    this.writes = new GrainWrites({
      grainSize: options.grainSize, sizeBytes: options.sizeBytes, index: this.index, files: this.files, verifier: this.verifier, room: this.room, ahead: this.ahead,
      nextGen: () => this.nextGen(), persist: (e) => this.persist(e), now: () => timing.clock.now(), drop, readWhole: (imageId, idx) => this.readWhole(imageId, idx),
      settle: () => this.native.settle(), log,
    });
    if (fast) this.replay(fast);
    const recorded = recover(map, map.disk, (row) => this.files.fileOf(row.imageId, row.idx), log);
    const rows = map.allGrains();
    sweep(map.disk, path.join(options.dir, 'grains'), rows);
    for (const row of rows) {
      this.index.insert({
        imageId: row.imageId, idx: row.idx, checksum: row.checksum, valid: row.valid, dirty: row.dirty,
        // A dirty grain left by another process: its next fsync syncs and records it again.
        gen: 0, uploadedGen: -1, verified: false, unsynced: row.dirty !== null, dirtySince: row.dirty ? row.lastAccess : 0,
        recorded: recorded.has(keyOf(row.imageId, row.idx)),
      });
    }
    this.timer = timing.clock.interval(() => this.flushTouches(), tunables.touchFlushMs);
    // Reads served natively do not wake JavaScript (see native/fuse3.c): their recency and
    // counts come in with the next request JavaScript serves, or at the latest this often.
    this.settleTimer = fast ? timing.clock.interval(() => this.native.settle(), 1000) : undefined;
  }

  /** Writes a killed process served natively but had not recorded become dirty sectors
   *  (see replayJournal); the journal's records then go. */
  private replay(fast: FastTable): void {
    const batch = fast.drain();
    if (!batch) return;
    const last = this.map.boot();
    // As recover() (power.ts): no boot recorded means the writer ran in this boot.
    if (last === undefined || last === this.map.disk.bootId()) {
      const { changed, missing } = replayJournal(batch, this.map.allGrains(), this.grainSize, this.timing.clock.now());
      for (const row of changed) this.map.putGrain(row);
      if (changed.length > 0) this.log.info(`took in writes to ${changed.length} grains that the last process acknowledged but had not recorded`);
      if (missing > 0) this.log.error(`${missing} writes the last process acknowledged name grains no longer cached; their data is not uploaded`);
    }
    fast.ack(batch[0] as number);
  }

  get stats(): CacheStats {
    return this.index.stats;
  }

  private nextGen(): number {
    return ++this.lastGen;
  }

  /** The bound of the cache (--cache-size). */
  get sizeBytes(): number {
    return this.options.sizeBytes;
  }

  private persist(e: Entry): void {
    const row: GrainRow = {
      imageId: e.imageId, idx: e.idx, length: this.grainSize, checksum: e.checksum, valid: e.valid, dirty: e.dirty,
      lastAccess: e.dirty ? e.dirtySince : this.timing.clock.now(),
    };
    this.map.putGrain(row);
  }

  has(imageId: number, idx: number): boolean {
    return this.index.has(keyOf(imageId, idx));
  }

  state(imageId: number, idx: number): GrainState | undefined {
    return this.index.get(keyOf(imageId, idx));
  }

  /** True when the cache holds every sector of [start, end) of the grain. */
  covers(imageId: number, idx: number, start: number, end: number): boolean {
    return this.index.covers(imageId, idx, start, end);
  }

  /** Indices of an image's dirty grains, ascending. */
  dirtyGrains(imageId: number): number[] {
    this.native.settle();
    return this.index.dirtyGrains(imageId);
  }

  /** Dirty bytes of one image and when its oldest dirty grain became dirty (0: none). */
  dirtyOf(imageId: number): { bytes: number; since: number } {
    this.native.settle();
    return this.index.dirtyOf(imageId);
  }

  /** Lets the FUSE binding serve reads of a cached grain's valid sectors natively, through
   *  its file opened for readNow(), once the grain is checked. The caller knows it lies
   *  within its image's size. */
  publishRead(imageId: number, idx: number): void {
    this.publish(imageId, idx, FAST_READ);
  }

  /** publishRead(), and whole-sector writes landed natively too: the caller knows nothing
   *  holds the grain (lock, checkpoint) and the image is writable. */
  publishWrite(imageId: number, idx: number): void {
    this.publish(imageId, idx, FAST_WRITE | FAST_READ);
  }

  private publish(imageId: number, idx: number, flags: number): void {
    if (!this.native.active || this.native.has(imageId, idx, flags)) return;
    const key = keyOf(imageId, idx);
    const entry = this.index.get(key);
    if (!entry || this.verifier.needsCheck(entry)) return;
    const fd = this.files.syncFd(key, entry);
    if (fd !== undefined) this.native.publish(imageId, idx, fd, flags, entry.valid);
  }

  /** A read of the grain was served natively: it is the most recently used. */
  private touch(imageId: number, idx: number): void {
    const key = keyOf(imageId, idx);
    const entry = this.index.get(key);
    if (!entry) return;
    this.index.use(key, entry);
    this.touched.set(key, { imageId, idx, at: this.timing.clock.now() });
  }

  /** Up to `limit` cached grains of an image, most recently used first (a handoff's hot list). */
  hotGrains(imageId: number, limit: number): number[] {
    return this.index.of(imageId).reverse().slice(0, limit).map((e) => e.idx);
  }

  /** Copies [offset, offset + length) of a cached grain into `target` at `targetOffset`.
   *  The caller checked covers(). Returns false when the grain failed its checksum (it is
   *  then dropped), vanished, or was written while its checksum was being checked. */
  async read(imageId: number, idx: number, offset: number, length: number, target: Buffer, targetOffset: number): Promise<boolean> {
    const key = keyOf(imageId, idx);
    const entry = this.index.get(key);
    if (!entry) return false;
    this.index.use(key, entry);
    this.touched.set(key, { imageId, idx, at: this.timing.clock.now() });
    try {
      const checksum = entry.checksum;
      if (this.verifier.needsCheck(entry) && checksum !== null) {
        if (offset === 0 && length === this.grainSize && !this.verifier.busy(key)) {
          // A whole grain: check it where it lands, no second buffer.
          await this.files.readFull(imageId, idx, target, targetOffset);
          return await this.verifier.check(key, entry, checksum, target.subarray(targetOffset, targetOffset + length));
        }
        const data = await this.verifier.whole(key, entry, checksum);
        if (!data) return false;
        data.copy(target, targetOffset, offset, offset + length);
        return true;
      }
      const { bytesRead } = await this.files.withFile(imageId, idx, (h) => h.read(target, targetOffset, length, offset));
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

  /** Copies [offset, offset + length) of a cached grain into `target` at `targetOffset`
   *  with one synchronous pread (opening its file synchronously when needed), when nothing
   *  needs checking first; false otherwise (read() then does it). The caller checked
   *  covers(). It blocks the event loop until the bytes are there: a grain prefetch()
   *  brought into the page cache, or a small read, for which a page-cached pread costs a
   *  few microseconds against tens for a turn through the thread pool (a page not in the
   *  page cache blocks the loop for one disk read, which the FUSE request waits for either way). */
  readNow(imageId: number, idx: number, offset: number, length: number, target: Buffer, targetOffset: number): boolean {
    const key = keyOf(imageId, idx);
    const entry = this.index.get(key);
    if (!entry || this.verifier.needsCheck(entry)) return false;
    const fd = this.files.fd(key) ?? this.files.syncFd(key, entry);
    if (fd === undefined) return false;
    this.index.use(key, entry);
    this.touched.set(key, { imageId, idx, at: this.timing.clock.now() });
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
    this.verifier.crc.startNow();
  }

  /** Gets a cached grain ready for readNow(): its checksum checked (on its first read in
   *  this process; the worker reads the file, which leaves it in the page cache), or else
   *  its start read by the worker, the kernel reading the rest ahead, and its file open for
   *  reading. False when readNow() cannot serve it: the grain is gone or failed its check
   *  (it is then dropped), or its file could not be opened (read() then finds out and says
   *  so). */
  async prefetch(imageId: number, idx: number): Promise<boolean> {
    const key = keyOf(imageId, idx);
    const entry = this.index.get(key);
    if (!entry) return false;
    if (this.verifier.needsCheck(entry)) {
      try {
        if (!(await this.verifier.checkFile(key, entry))) return false;
      } catch {
        return false;
      }
      if (this.index.get(key) !== entry || this.verifier.needsCheck(entry)) return false;
    } else {
      // No answer to wait for: the reader comes to this grain a read-ahead window later.
      this.verifier.crc.warm(this.files.fileOf(imageId, idx), this.grainSize);
    }
    return this.files.openForRead(key, entry);
  }

  /** Whether the grain's checksum is checked (or it has none to check): false until the
   *  first read of a clean grain in this process. */
  checked(imageId: number, idx: number): boolean {
    const entry = this.index.get(keyOf(imageId, idx));
    return entry !== undefined && !this.verifier.needsCheck(entry);
  }

  /** The whole grain as the file holds it (grain-size bytes; holes and the missing tail as zeros). */
  readWhole(imageId: number, idx: number): Promise<Buffer> {
    return this.files.readFull(imageId, idx, Buffer.allocUnsafe(this.grainSize), 0);
  }

  /** Takes a grain's whole content as fetched from Azure (see GrainWrites.fill). False
   *  when there was no room, or `stillValid()` said the content went stale meanwhile. */
  fill(imageId: number, idx: number, data: Buffer, stillValid: () => boolean = () => true, checksum?: number): Promise<boolean> {
    return this.writes.fill(imageId, idx, data, stillValid, checksum);
  }

  /** Writes `data` at `offset` within the grain and marks it dirty. Sectors the write only
   *  partly covers must already be valid (the image fetches them first). Waits up to
   *  `waitMs` for room when the cache is full of dirty data, then fails with no-space. */
  write(imageId: number, idx: number, offset: number, data: Buffer, waitMs: number): Promise<void> {
    return this.writes.write(imageId, idx, offset, data, waitMs);
  }
  /** Makes grain `idx` all zeros, written and dirty, with no blocks in its file (see Writes.zeroGrain). */
  zeroGrain(imageId: number, idx: number, waitMs: number): Promise<void> {
    return this.writes.zeroGrain(imageId, idx, waitMs);
  }


  /** write() at once, when the grain's file is open; false (nothing done) otherwise. */
  writeNow(imageId: number, idx: number, offset: number, data: Buffer): boolean {
    return this.writes.writeNow(imageId, idx, offset, data);
  }

  /** Resolves once the file of grain `idx`, if it is being opened (prepare()), is open. */
  fileReady(imageId: number, idx: number): Promise<void> {
    return this.files.ready(keyOf(imageId, idx));
  }

  /** Resolves once the grain files being closed now are closed. */
  filesClosed(): Promise<void> {
    return this.files.closed();
  }

  /** Opens the file of grain `idx` ahead of a sequential writer (see GrainWrites.prepare). */
  prepare(imageId: number, idx: number): void {
    this.writes.prepare(imageId, idx);
  }

  /** After an upload of the grain as it was at generation `gen` (content `data`, which
   *  must not change until this settles): clean again unless it was written meanwhile. */
  markUploaded(imageId: number, idx: number, gen: number, data: Buffer): Promise<void> {
    return this.writes.markUploaded(imageId, idx, gen, data);
  }

  /** The image now ends at `size`: grains past it go (dirty or not), the grain holding the
   *  end is cut there. */
  truncate(imageId: number, size: number): Promise<void> {
    // The new size durable before any grain file is cut (see power.ts).
    this.map.durable();
    return this.writes.truncate(imageId, size);
  }

  /** Drops what a crash may have left past the image's recorded end `size`. */
  clipPast(imageId: number, size: number): Promise<void> {
    return this.writes.clipPast(imageId, size);
  }

  /** Makes what was written to the image (every image: none given) durable on local disk,
   *  grain data before the rows that describe it (--sync local fsync; see power.ts). Fails
   *  (failed, no-space) when the local disk does; the next call syncs the same again. */
  async sync(imageId?: number): Promise<void> {
    this.native.settle();
    const pending = [...this.index.values()].filter((e) => e.unsynced && (imageId === undefined || e.imageId === imageId));
    await syncGrains(this.index, this.files, pending, (records) => this.map.durable(records));
  }

  private remove(key: string, entry: Entry): void {
    this.index.delete(key, entry);
    this.touched.delete(key);
    this.files.close(key);
    this.files.closeRead(key);
  }

  /** Drops grains; with `cleanOnly`, only those still clean once the FUSE binding's
   *  natively served writes are settled (an eviction, a failed check). */
  private async drop(entries: Entry[], cleanOnly = false): Promise<number> {
    // Revoked before anything else: the binding may write into a grain until then.
    for (const e of entries) this.native.revoke(e.imageId, e.idx);
    if (cleanOnly) entries = entries.filter((e) => !e.dirty && !e.landing);
    for (const e of entries) this.remove(keyOf(e.imageId, e.idx), e);
    this.map.deleteGrains(entries);
    // Dirty data, or a record of an fsync: gone for good before the file goes (see power.ts).
    if (entries.some((e) => e.dirty || e.recorded)) this.map.durable();
    await Promise.all(entries.map((e) => this.files.remove(keyOf(e.imageId, e.idx), this.files.fileOf(e.imageId, e.idx))));
    return entries.length;
  }

  /** Drops every clean grain of an image (its blob changed remotely). Returns how many. */
  async dropClean(imageId: number): Promise<number> {
    this.native.settle();
    const victims = [...this.index.values()].filter((e) => e.imageId === imageId && !e.dirty);
    return this.drop(victims, true);
  }

  /** Drops every grain of an image, dirty ones too (its blob was deleted). */
  async dropImage(imageId: number): Promise<void> {
    await this.drop([...this.index.values()].filter((e) => e.imageId === imageId));
    for (const key of this.ahead.keys()) {
      if (!key.startsWith(`${imageId}:`)) continue;
      this.ahead.delete(key);
      this.files.close(key);
    }
    const dir = this.files.dirOf(imageId);
    this.files.forgetDir(dir);
    await this.files.disk.rm(dir);
  }

  /** Bytes of an image held in the cache. */
  cachedBytes(imageId: number): number {
    return this.index.cachedBytes(imageId);
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
    this.native.settle();
    this.timer.cancel();
    this.settleTimer?.cancel();
    this.flushTouches();
    // Data left dirty (Azure unreachable at unmount) must survive a power loss before the next mount.
    await this.sync().catch((e: unknown) => this.log.warn(`could not sync the cache at close: ${(e as Error).message}`));
    await this.files.closeAll();
    // Files opened ahead of a writer who stopped before reaching them (still empty).
    const unused = [...this.ahead].filter(([key]) => !this.index.has(key));
    this.ahead.clear();
    await Promise.all(unused.map(([, file]) => this.files.disk.rm(file).catch(() => undefined)));
    await this.verifier.crc.close();
  }
}
