/* The cache's side of the native fast path (native/fuse3.c). The FUSE binding serves a
 * read or write of the kernel on libfuse's own thread, without JavaScript, when every grain
 * it touches is published there: a grain is published for reading once JavaScript served a
 * read of it at once (checked, within the image's size; with its valid sectors, which the
 * binding's writes add to), for writing once it served a write of it at once (no lock, no
 * checkpoint holding it, the image writable), with the descriptor of its file. What the binding served is journaled, and settle() brings the
 * grain states here up to date (writes first: dirty sectors, generations; then reads:
 * recency, the reader's streak).
 *
 *   event (JavaScript)                          binding's table          then
 *   readNow()/writeNow() served a grain         published (read/write)   later requests of it served natively
 *   lock taken, file closed, grain dropped      revoked                  settle(): its served writes are dirty here
 *   checkpoint opened, conflict                 image revoked            settle()
 *   fsync, upload marked clean, eviction, any   —                        settle() first, so nothing acknowledged
 *   FUSE request JavaScript serves                                       natively is missed
 *
 * A revoke returns only when no request of the grain is being served natively, so a grain
 * that is revoked, then settled, is stable until JavaScript publishes it again. */

import type { GrainRow } from '../grainmap/rows';
import { keyOf } from './grain-index';
import { allSet, emptyBitmap, sectorSpan, sectorsOf, setBits } from './sectors';

export const FAST_READ = 1;
export const FAST_WRITE = 2;
const REC_READ = 1;
const REC_WRITE = 2;

/** Calls `fn` for each record of `kind` in a drained batch (its first number is the journal
 *  position, then 4 numbers a record: kind, image, offset, length). */
function forEachRecord(batch: Float64Array, kind: number, fn: (imageId: number, offset: number, length: number) => void): void {
  for (let i = 1; i < batch.length; i += 4) {
    if (batch[i] === kind) fn(batch[i + 1] as number, batch[i + 2] as number, batch[i + 3] as number);
  }
}

/** The binding's table (lib/fuse/fuse3.ts makes one). */
export interface FastTable {
  /** `valid`: the grain's valid-sector bitmap, null when all are. */
  publish(imageId: number, idx: number, fd: number, flags: number, valid: Buffer | null): void;
  revoke(imageId: number, idx: number): void;
  /** Requests on handle `fh` are of image `imageId` (0: of none). */
  bind(fh: number, imageId: number): void;
  /** The records journaled since the last drain: first the journal position after them,
   *  then 4 numbers a record (kind, image, offset, length); undefined when none. A process
   *  that was killed left its unacknowledged records for the next one's first drain. */
  drain(): Float64Array | undefined;
  /** The records before `position` are in the grain map and may go. */
  ack(position: number): void;
  /** Reads and writes served natively so far. */
  served(): { reads: number; writes: number };
}

/** What an open image does with requests served natively. */
export interface NativeListener {
  /** Writes landed in `grains`, the last of them at [offset, offset + length). */
  wrote(grains: ReadonlySet<number>, offset: number, length: number): void;
  /** `count` reads of `bytes` in all touched `grains`, the last of them at [offset, offset + length). */
  read(grains: ReadonlySet<number>, count: number, bytes: number, offset: number, length: number): void;
}

/** The cache's bookkeeping of requests served natively. */
export interface NativeBookkeeping {
  wrote(imageId: number, idx: number, ranges: readonly (readonly [number, number])[]): void;
  read(imageId: number, idx: number): void;
}

export class NativeGrains {
  /** Published grains → their descriptor and flags, as the binding has them. */
  private readonly published = new Map<string, { fd: number; flags: number; whole: boolean; imageId: number; idx: number }>();
  private readonly listeners = new Map<number, NativeListener>();
  /** Taking in served writes: a settle() asked for meanwhile has nothing to add. */
  private settling = false;

  constructor(
    private readonly table: FastTable | undefined,
    private readonly grainSize: number,
    private readonly cache: NativeBookkeeping,
  ) {}

  get active(): boolean {
    return this.table !== undefined;
  }

  /** Requests on handle `fh` are of image `imageId`; 0 unbinds. */
  bind(fh: number, imageId: number): void {
    this.table?.bind(fh, imageId);
  }

  listen(imageId: number, listener: NativeListener): void {
    this.listeners.set(imageId, listener);
  }

  /** Publishes the grain with `flags` through `fd`, with its valid sectors (null: all).
   *  Again with a newer bitmap when sectors became valid since (JavaScript served a read
   *  the binding could not). */
  publish(imageId: number, idx: number, fd: number, flags: number, valid: Buffer | null): void {
    if (!this.table) return;
    const key = keyOf(imageId, idx);
    const known = this.published.get(key);
    if (known && known.fd === fd && (known.flags & flags) === flags && known.whole) return;
    this.table.publish(imageId, idx, fd, flags, valid);
    this.published.set(key, { fd, flags: known && known.fd === fd ? known.flags | flags : flags, whole: valid === null, imageId, idx });
  }

  /** Whether the grain is published with all of `flags` and every sector valid. */
  has(imageId: number, idx: number, flags: number): boolean {
    const known = this.published.get(keyOf(imageId, idx));
    return known !== undefined && (known.flags & flags) === flags && known.whole;
  }

  /** No request of the grain is served natively from now on; those served before are settled. */
  revoke(imageId: number, idx: number): void {
    const key = keyOf(imageId, idx);
    if (!this.table || !this.published.has(key)) return;
    this.table.revoke(imageId, idx);
    this.published.delete(key);
    this.settle();
  }

  /** revoke() of every published grain of an image. */
  revokeImage(imageId: number): void {
    if (!this.table) return;
    for (const [key, p] of this.published) {
      if (p.imageId !== imageId) continue;
      this.table.revoke(imageId, p.idx);
      this.published.delete(key);
    }
    this.settle();
  }

  /** Brings the grain states up to date with what was served natively: the writes (a grain
   *  map record per grain, not per write), then the records' room is freed, then the reads. */
  settle(): void {
    if (!this.table || this.settling) return;
    const batch = this.table.drain();
    if (!batch) return;
    const g = this.grainSize;
    this.settling = true;
    try {
      const grains = new Map<string, { imageId: number; idx: number; ranges: [number, number][] }>();
      // Per image: its grains written and the last write (what follows a write, times and
      // the flusher's turn, needs no more than once an image a batch).
      const images = new Map<number, { grains: Set<number>; offset: number; length: number }>();
      forEachRecord(batch, REC_WRITE, (imageId, offset, length) => {
        const idx = Math.floor(offset / g);
        const key = keyOf(imageId, idx);
        const grain = grains.get(key) ?? { imageId, idx, ranges: [] };
        grain.ranges.push([offset - idx * g, length]);
        grains.set(key, grain);
        const image = images.get(imageId) ?? { grains: new Set<number>(), offset, length };
        image.grains.add(idx);
        image.offset = offset;
        image.length = length;
        images.set(imageId, image);
      });
      for (const grain of grains.values()) this.cache.wrote(grain.imageId, grain.idx, grain.ranges);
      for (const [imageId, image] of images) this.listeners.get(imageId)?.wrote(image.grains, image.offset, image.length);
    } finally {
      this.settling = false;
    }
    this.table.ack(batch[0] as number);
    // Reads come by the thousand between two settles: once a grain and an image a batch.
    const reads = new Map<number, { grains: Set<number>; count: number; bytes: number; offset: number; length: number }>();
    forEachRecord(batch, REC_READ, (imageId, offset, length) => {
      const image = reads.get(imageId) ?? { grains: new Set<number>(), count: 0, bytes: 0, offset, length };
      for (let idx = Math.floor(offset / g); idx * g < offset + length; idx++) image.grains.add(idx);
      image.count++;
      image.bytes += length;
      image.offset = offset;
      image.length = length;
      reads.set(imageId, image);
    });
    for (const [imageId, image] of reads) {
      for (const idx of image.grains) this.cache.read(imageId, idx);
      this.listeners.get(imageId)?.read(image.grains, image.count, image.bytes, image.offset, image.length);
    }
  }

  served(): { reads: number; writes: number } {
    return this.table?.served() ?? { reads: 0, writes: 0 };
  }
}

/** At open, before the grain map's rows become the cache's index: the writes a killed
 *  process served natively but had not yet recorded (their bytes are in the grain files,
 *  which a process kill leaves in the page cache) become dirty sectors of their rows.
 *  Returns the rows changed, and how many records named a grain no longer cached. Only
 *  for a process that ran in this boot: after a reboot neither the journal nor the bytes
 *  it names are trusted (power.ts brings dirty grains back to what fsync acknowledged). */
export function replayJournal(batch: Float64Array, rows: readonly GrainRow[], grainSize: number, now: number): { changed: GrainRow[]; missing: number } {
  const byKey = new Map<string, { -readonly [K in keyof GrainRow]: GrainRow[K] }>(rows.map((r) => [keyOf(r.imageId, r.idx), { ...r }]));
  const changed = new Map<string, GrainRow>();
  let missing = 0;
  forEachRecord(batch, REC_WRITE, (imageId, offset, length) => {
    const idx = Math.floor(offset / grainSize);
    const key = keyOf(imageId, idx);
    const row = byKey.get(key);
    if (!row) {
      missing++;
      return;
    }
    const start = offset - idx * grainSize;
    const [from, to] = sectorSpan(start, start + length);
    const dirty = row.dirty ? Buffer.from(row.dirty) : emptyBitmap(grainSize);
    if (!row.dirty) row.lastAccess = now;
    setBits(dirty, from, to);
    let valid = row.valid ? Buffer.from(row.valid) : null;
    if (valid) {
      setBits(valid, from, to);
      if (allSet(valid, 0, sectorsOf(grainSize))) valid = null;
    }
    row.dirty = dirty;
    row.valid = valid;
    row.checksum = null;
    changed.set(key, row);
  });
  return { changed: [...changed.values()], missing };
}
