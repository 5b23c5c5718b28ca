/* The local grain cache: one file per grain under <dir>/grains/<image id>/<grain index>,
 * bounded by the cache size. Clean grains are evicted least recently used first; dirty
 * grains are never evicted. Every clean grain carries a CRC-32 in the grain map, checked
 * the first time this process reads the grain, so a file torn by a crash or damaged on
 * disk is dropped and fetched again instead of served.
 *
 * The index of cached grains lives in memory (a Map in LRU order, rebuilt from the grain
 * map at open); access times go back to the grain map in batches. */

import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import zlib from 'node:zlib';
import { CacheOptions } from '../options';
import { GrainMap } from '../grainmap/grainmap';
import { Logger } from '../log';

const TOUCH_FLUSH_MS = 5_000;
const MAX_OPEN_FILES = 64;

interface Entry {
  readonly imageId: number;
  readonly idx: number;
  length: number;
  checksum: number | null;
  dirty: boolean;
  verified: boolean;
}

export interface CacheStats {
  usedBytes: number;
  grains: number;
  evictions: number;
  corruptions: number;
}

const keyOf = (imageId: number, idx: number): string => `${imageId}:${idx}`;

/** Reads may still be using a handle that leaves the table: close it a little later. */
function closeLater(handle: Promise<fsp.FileHandle>): void {
  setTimeout(() => handle.then((h) => h.close()).catch(() => undefined), 2_000).unref();
}

export class GrainCache {
  private readonly lru = new Map<string, Entry>();
  private readonly touched = new Map<string, { imageId: number; idx: number; at: number }>();
  private readonly files = new Map<string, Promise<fsp.FileHandle>>();
  private readonly timer: NodeJS.Timeout;
  readonly stats: CacheStats = { usedBytes: 0, grains: 0, evictions: 0, corruptions: 0 };

  constructor(
    private readonly options: CacheOptions,
    private readonly map: GrainMap,
    private readonly log: Logger,
  ) {
    fs.mkdirSync(path.join(options.dir, 'grains'), { recursive: true });
    for (const row of map.allGrains()) {
      this.insert({ imageId: row.imageId, idx: row.idx, length: row.length, checksum: row.checksum, dirty: row.dirty !== null, verified: false });
    }
    this.timer = setInterval(() => this.flushTouches(), TOUCH_FLUSH_MS);
    this.timer.unref();
  }

  private insert(entry: Entry): void {
    this.lru.set(keyOf(entry.imageId, entry.idx), entry);
    this.stats.usedBytes += entry.length;
    this.stats.grains++;
  }

  private fileOf(imageId: number, idx: number): string {
    return path.join(this.options.dir, 'grains', String(imageId), String(idx));
  }

  /** True when the grain is in the cache (it may still fail its checksum on first read). */
  has(imageId: number, idx: number): boolean {
    return this.lru.has(keyOf(imageId, idx));
  }

  /** Copies [offset, offset + length) of a cached grain into `target` at `targetOffset`.
   *  Returns false when the grain is not cached or failed its checksum (it is then dropped). */
  async read(imageId: number, idx: number, offset: number, length: number, target: Buffer, targetOffset: number): Promise<boolean> {
    const key = keyOf(imageId, idx);
    const entry = this.lru.get(key);
    if (!entry) return false;
    this.lru.delete(key);
    this.lru.set(key, entry);
    this.touched.set(key, { imageId, idx, at: Date.now() });
    try {
      if (!entry.verified && !entry.dirty) {
        const data = await fsp.readFile(this.fileOf(imageId, idx));
        if (data.length !== entry.length || zlib.crc32(data) !== entry.checksum) {
          this.stats.corruptions++;
          this.log.warn(`cached grain ${idx} of image ${imageId} failed its checksum; fetching it again`);
          await this.drop([entry]);
          return false;
        }
        entry.verified = true;
        data.copy(target, targetOffset, offset, offset + length);
        return true;
      }
      const handle = await this.open(imageId, idx);
      const { bytesRead } = await handle.read(target, targetOffset, length, offset);
      if (bytesRead < length) target.fill(0, targetOffset + bytesRead, targetOffset + length);
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      this.stats.corruptions++;
      this.log.warn(`cached grain ${idx} of image ${imageId} vanished from the cache directory; fetching it again`);
      await this.drop([entry]);
      return false;
    }
  }

  private open(imageId: number, idx: number): Promise<fsp.FileHandle> {
    const key = keyOf(imageId, idx);
    let handle = this.files.get(key);
    if (handle) {
      this.files.delete(key);
      this.files.set(key, handle);
      return handle;
    }
    handle = fsp.open(this.fileOf(imageId, idx), 'r');
    handle.catch(() => this.files.delete(key));
    this.files.set(key, handle);
    while (this.files.size > MAX_OPEN_FILES) {
      const [oldest, old] = this.files.entries().next().value as [string, Promise<fsp.FileHandle>];
      this.files.delete(oldest);
      closeLater(old);
    }
    return handle;
  }

  private closeFile(key: string): void {
    const handle = this.files.get(key);
    if (!handle) return;
    this.files.delete(key);
    closeLater(handle);
  }

  /** Stores a complete clean grain (replacing what was cached). Evicts least recently used
   *  clean grains to make room; when only dirty grains are left it does not cache and
   *  returns false. */
  async storeClean(imageId: number, idx: number, data: Buffer): Promise<boolean> {
    const key = keyOf(imageId, idx);
    const old = this.lru.get(key);
    if (old?.dirty) return false;
    if (!(await this.makeRoom(data.length - (old?.length ?? 0), key))) return false;
    const file = this.fileOf(imageId, idx);
    await fsp.mkdir(path.dirname(file), { recursive: true });
    // Write aside and rename, so a reader holding the old file never sees a half-written one.
    const partial = `${file}.partial`;
    await fsp.writeFile(partial, data);
    await fsp.rename(partial, file);
    this.closeFile(key);
    const checksum = zlib.crc32(data);
    this.map.putClean(imageId, idx, data.length, checksum, Date.now());
    if (old) this.remove(key, old);
    this.insert({ imageId, idx, length: data.length, checksum, dirty: false, verified: true });
    return true;
  }

  /** Evicts clean grains, least recently used first, until `bytes` more fit. */
  private async makeRoom(bytes: number, keep: string): Promise<boolean> {
    const victims: Entry[] = [];
    let free = this.options.sizeBytes - this.stats.usedBytes;
    if (free >= bytes) return true;
    for (const [key, entry] of this.lru) {
      if (free >= bytes) break;
      if (entry.dirty || key === keep) continue;
      victims.push(entry);
      free += entry.length;
    }
    if (free < bytes) return false;
    this.stats.evictions += victims.length;
    await this.drop(victims);
    return true;
  }

  private remove(key: string, entry: Entry): void {
    if (this.lru.delete(key)) {
      this.stats.usedBytes -= entry.length;
      this.stats.grains--;
    }
    this.touched.delete(key);
    this.closeFile(key);
  }

  private async drop(entries: Entry[]): Promise<void> {
    for (const e of entries) this.remove(keyOf(e.imageId, e.idx), e);
    this.map.deleteGrains(entries);
    await Promise.all(entries.map((e) => fsp.rm(this.fileOf(e.imageId, e.idx), { force: true })));
  }

  /** Drops every clean grain of an image (its blob changed remotely). Returns how many. */
  async dropClean(imageId: number): Promise<number> {
    const victims = [...this.lru.values()].filter((e) => e.imageId === imageId && !e.dirty);
    await this.drop(victims);
    return victims.length;
  }

  /** Bytes of an image held in the cache. */
  cachedBytes(imageId: number): number {
    let total = 0;
    for (const e of this.lru.values()) if (e.imageId === imageId) total += e.length;
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
    const handles = [...this.files.values()];
    this.files.clear();
    await Promise.all(handles.map((h) => h.then((f) => f.close()).catch(() => undefined)));
  }
}
