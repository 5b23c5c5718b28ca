/* The cache's index: one Entry per cached grain, in memory, in LRU order (a Map keeps
 * insertion order; a use moves the entry to the end), with the byte counts that bound the
 * cache. Rebuilt from the grain map at open. The grain states themselves are drawn at the
 * top of cache.ts. */

import { SECTOR, allSet, countBits, sectorSpan } from './sectors';

export interface Entry {
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
  /** An fsync recorded its dirty sectors (see power.ts): its file is not cut or removed
   *  before the removal of that record is durable. */
  recorded?: boolean;
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

export const keyOf = (imageId: number, idx: number): string => `${imageId}:${idx}`;

export class GrainIndex {
  private readonly lru = new Map<string, Entry>();
  readonly stats: CacheStats = { usedBytes: 0, dirtyBytes: 0, grains: 0, evictions: 0, corruptions: 0 };

  constructor(private readonly grainSize: number) {}

  get(key: string): Entry | undefined {
    return this.lru.get(key);
  }

  has(key: string): boolean {
    return this.lru.has(key);
  }

  /** Every entry, least recently used first. */
  values(): IterableIterator<Entry> {
    return this.lru.values();
  }

  /** The entries of one image. */
  of(imageId: number): Entry[] {
    return [...this.lru.values()].filter((e) => e.imageId === imageId);
  }

  insert(entry: Entry): void {
    this.lru.set(keyOf(entry.imageId, entry.idx), entry);
    this.stats.usedBytes += this.grainSize;
    if (entry.dirty) this.stats.dirtyBytes += this.grainSize;
    this.stats.grains++;
  }

  /** The entry was just used: it becomes the most recently used. */
  use(key: string, entry: Entry): void {
    this.lru.delete(key);
    this.lru.set(key, entry);
  }

  /** Takes `entry` out of the index, if it is still the grain's. */
  delete(key: string, entry: Entry): void {
    if (this.lru.get(key) !== entry) return;
    this.lru.delete(key);
    this.stats.usedBytes -= this.grainSize;
    if (entry.dirty) this.stats.dirtyBytes -= this.grainSize;
    this.stats.grains--;
  }

  /** True when the index holds every sector of [start, end) of the grain. */
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

  /** Bytes of an image held in the cache. */
  cachedBytes(imageId: number): number {
    let total = 0;
    for (const e of this.lru.values()) if (e.imageId === imageId) total += this.grainSize;
    return total;
  }
}
