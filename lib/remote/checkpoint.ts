/* Crash-consistent checkpoints of one page-blob image (--checkpoints N): Azure snapshots of
 * the blob, each equal to the image exactly as it was at one fsync F. The image (writes,
 * fsync) and the flusher (uploads, the snapshot) share this barrier through UploadSource.
 *
 * At a qualifying fsync F (checkpoints on, none open, the image written since the last
 * checkpoint, the interval since the last one passed) the barrier opens with P: the grains
 * dirty at F with their generation at F. Writes are acknowledged only once in the cache, so
 * at F the image is Azure's bytes plus the cached bytes of P; the barrier keeps both:
 *
 *   state    event                                  what happens
 *   closed   qualifying fsync F                     open, P = dirty grains and generations at F
 *   closed   any other fsync                        nothing
 *   open     flusher picks grains                   only grains of P not yet uploaded; the rest
 *                                                   (written after F) is held back
 *   open     write to a grain of P not uploaded     waits until that grain is uploaded (its F
 *                                                   bytes must reach Azure first)
 *   open     write that changes the size,           waits until the barrier closes (the
 *              truncate                             snapshot must carry F's size)
 *   open     write to any other grain               lands at once, uploaded after the snapshot
 *   open     a waiting write waited --io-timeout    abandoned: logged once, closed, no
 *                                                   snapshot; the writes go on (never failed)
 *   open     grain of P uploaded (uploadedGen ≥     it leaves the pending set; its waiting
 *              its generation at F)                 writes go on
 *   open     pending set empty, sizes in Azure      flusher snapshots the blob (metadata
 *                                                   blobdisk_checkpoint=<F's UTC time>), keeps
 *                                                   the newest N checkpoints, closes
 *   open     fsync                                  nothing: the next qualifying fsync after
 *                                                   the close opens the next one
 *   open     Azure unreachable                      stays open; the flusher retries with backoff
 *   open     unmount                                the drain uploads P, snapshots, then the rest
 * A write in flight while F's fsync runs (not acknowledged before it) may show in F's
 * checkpoint or not, as on a disk. Block blobs get no checkpoints: their uploads restage
 * neighbouring bytes, which may be newer than F. */

import type { Clock } from '../clock';
import type { Logger } from '../log';

/** Metadata of a checkpoint: when its fsync was (UTC); marks blobdisk's own checkpoints. */
export const CHECKPOINT_KEY = 'blobdisk_checkpoint';
/** Metadata a snapshot's name is kept in (the name under .snapshots/<image>/). */
export const SNAPSHOT_NAME_KEY = 'blobdisk_snapshot';

export interface CheckpointOptions {
  /** Checkpoints kept per image (the newest); 0: off. */
  readonly keep: number;
  /** A checkpoint is opened at the first fsync this long after the last one; 0: every fsync. */
  readonly intervalMs: number;
  /** A write waits this long for a grain of the barrier (--io-timeout), then the checkpoint is abandoned. */
  readonly waitMs: number;
}

/** One grain's upload state, as the cache knows it. */
export interface GrainProgress {
  readonly dirty: Buffer | null;
  readonly uploadedGen: number;
}

export class Checkpoints {
  /** Grains of P not yet uploaded → their generation at F; undefined while closed. */
  private pending: Map<number, number> | undefined;
  /** F's time (ms), while open. */
  private openedAt = 0;
  private lastAt = Number.NEGATIVE_INFINITY;
  private changed = false;
  private waiters: (() => void)[] = [];
  /** The UTC time of the last checkpoint taken here (of its fsync). */
  last: string | undefined;
  /** Checkpoints taken, abandoned, by this process. */
  taken = 0;
  abandoned = 0;

  constructor(
    readonly options: CheckpointOptions,
    private readonly clock: Clock,
    private readonly log: Logger,
    private readonly name: string,
  ) {}

  get open(): boolean {
    return this.pending !== undefined;
  }

  /** F's time as the checkpoint names it, while open. */
  get time(): string {
    return new Date(this.openedAt).toISOString();
  }

  /** The image was written (or cut): the next qualifying fsync has something to keep. */
  wrote(): void {
    this.changed = true;
  }

  /** At an fsync: opens a barrier over `dirty` (grain → generation, taken at once) when
   *  this fsync qualifies. Returns whether it opened. */
  fsynced(dirty: ReadonlyMap<number, number>): boolean {
    const now = this.clock.now();
    if (this.open || !this.changed || now - this.lastAt < this.options.intervalMs) return false;
    this.pending = new Map(dirty);
    this.openedAt = now;
    this.changed = false;
    return true;
  }

  /** Whether the flusher may upload grain `idx` now. */
  mayUpload(idx: number): boolean {
    return this.pending === undefined || this.pending.has(idx);
  }

  /** Whether a write to grain `idx` (or, with `resizes`, one that changes the size) must wait. */
  holds(idx: number | undefined, resizes = false): boolean {
    if (this.pending === undefined) return false;
    return resizes || (idx !== undefined && this.pending.has(idx));
  }

  /** Waits while holds(idx, resizes); after waitMs abandons the checkpoint. Never rejects. */
  async wait(idx: number | undefined, resizes = false): Promise<void> {
    if (!this.holds(idx, resizes)) return;
    const timer = this.clock.timeout(() => this.abandon(`a write waited ${Math.round(this.options.waitMs / 1000)} s for its grain's upload`), this.options.waitMs);
    try {
      while (this.holds(idx, resizes)) await new Promise<void>((resolve) => this.waiters.push(resolve));
    } finally {
      timer.cancel();
    }
  }

  /** After uploads: grains of P uploaded since F (or no longer dirty) leave the pending set,
   *  and the writes waiting for them go on. */
  progress(state: (idx: number) => GrainProgress | undefined): void {
    if (this.pending === undefined) return;
    for (const [idx, gen] of this.pending) {
      const s = state(idx);
      if (!s?.dirty || s.uploadedGen >= gen) this.pending.delete(idx);
    }
    this.wake();
  }

  /** Every grain of P is in Azure: the snapshot may be taken. */
  get ready(): boolean {
    return this.pending !== undefined && this.pending.size === 0;
  }

  /** The snapshot was taken: closes. */
  close(): void {
    if (this.pending === undefined) return;
    this.last = this.time;
    this.lastAt = this.openedAt;
    this.taken++;
    this.end();
  }

  /** Gives the checkpoint up (logged once): closes without a snapshot. The image counts as
   *  changed, so the next qualifying fsync opens a new one. */
  abandon(why: string): void {
    if (this.pending === undefined) return;
    this.log.warn(`checkpoint of ${this.name} at ${this.time} abandoned: ${why}; the next fsync takes a new one`);
    this.abandoned++;
    this.changed = true;
    this.end();
  }

  private end(): void {
    this.pending = undefined;
    this.wake();
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }
}
