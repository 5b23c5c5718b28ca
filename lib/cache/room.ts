/* Room in the cache: the cache holds at most `sizeBytes` of grains. Clean grains are
 * evicted, least recently used first, to make room; dirty grains and grains a write is
 * landing in never are. A write that finds the cache full of dirty data waits for the
 * flusher to clean some, up to its bound, then the caller fails (no-space). Room is
 * claimed (reserved) before the caller awaits anything, so concurrent callers never count
 * the same free bytes twice; the caller gives it back once its grain is in the index. */

import { Clock } from '../clock';
import { Entry, GrainIndex } from './grain-index';

export class Room {
  /** Room make() promised to grains whose files are still being written (not yet in usedBytes). */
  private reserved = 0;

  constructor(
    private readonly index: GrainIndex,
    private readonly sizeBytes: number,
    private readonly grainSize: number,
    /** Drops evicted grains (the cache's own drop). */
    private readonly drop: (entries: Entry[]) => Promise<void>,
    private readonly clock: Clock,
    /** How often a write waiting for room looks again. */
    private readonly pollMs: number,
    /** Brings the grain states up to date with writes the FUSE binding served natively. */
    private readonly settle: () => void = () => undefined,
  ) {}

  /** Bytes neither used nor promised. */
  get free(): number {
    return this.sizeBytes - this.index.stats.usedBytes - this.reserved;
  }

  /** Evicts clean grains, least recently used first, until `bytes` more fit, and reserves
   *  them (give them back with release()). For dirty data, waits up to `waitMs` for the
   *  flusher to clean grains that can then go. False when there is no room. */
  async make(bytes: number, forDirty: boolean, waitMs = 0): Promise<boolean> {
    const until = this.clock.now() + waitMs;
    for (;;) {
      this.settle();
      const victims: Entry[] = [];
      let free = this.free;
      for (const entry of this.index.values()) {
        if (free >= bytes) break;
        if (entry.dirty || entry.landing) continue;
        victims.push(entry);
        free += this.grainSize;
      }
      if (free >= bytes) {
        this.reserved += bytes;
        this.index.stats.evictions += victims.length;
        await this.drop(victims);
        return true;
      }
      if (!forDirty || this.clock.now() >= until) return false;
      await this.clock.sleep(this.pollMs);
    }
  }

  /** Gives back room make() reserved. */
  release(bytes: number): void {
    this.reserved -= bytes;
  }
}
