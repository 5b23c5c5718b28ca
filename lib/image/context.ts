/* What the parts of one open image share: its dependencies, its RemoteBlob, its
 * counters, the per-grain locks, and the epoch. The epoch moves whenever sizes or the
 * remote change; a fetch started in an older epoch must not fill the cache. */

import { GrainCache } from '../cache/cache';
import { GrainMap } from '../grainmap/grainmap';
import { Logger } from '../log';
import { ImageCounters, newImageCounters } from '../metrics';
import { ReadOptions, SyncMode } from '../config';
import { CheckpointOptions, Checkpoints } from '../remote/checkpoint';
import type { HolderIdentity } from '../remote/holder';
import { RemoteBlob } from '../remote/remote';
import { Uploads } from '../remote/uploads';
import { BlobStore } from '../store/types';
import { SYSTEM_TIMING, Timing } from '../tunables';
import { GrainLocks } from './grain-lock';
import { BufferPool } from './pool';

/** Ranged GETs in flight across the whole mount; read-ahead waits its turn, demand reads do
 *  not. Their grain buffers come from one pool: about two per GET are filling or being
 *  stored at a time (see pending.ts). */
export class FetchBudget {
  inFlight = 0;
  readonly buffers: BufferPool;
  constructor(
    readonly limit: number,
    grainSize: number,
  ) {
    this.buffers = new BufferPool(grainSize, Math.max(2, Math.min(2 * limit + 2, Math.floor((64 * 1024 * 1024) / grainSize))));
  }
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
  /** How long a write waits for room when the cache is full of dirty data. */
  readonly dirtyWaitMs: number;
  /** The lease id this cache directory proposes (stable, so a crashed mount's leases come back). */
  readonly leaseId: string;
  readonly sync: SyncMode;
  /** With --sync cloud an fsync fails (unavailable) when nothing could be uploaded for this
   *  long (--io-timeout), instead of waiting for Azure forever. */
  readonly syncStallMs?: number;
  /** Told whenever the image gets something to upload; uploads it now for fsync with
   *  --sync cloud; holds its uploads during a rename. */
  readonly uploads: Uploads;
  /** The clock and tunables (the system's when absent). */
  readonly timing?: Timing;
  /** Crash-consistent checkpoints of page blobs (--checkpoints); absent: none. */
  readonly checkpoints?: CheckpointOptions;
  /** This mount, named in a blob's metadata while it holds the lease. */
  readonly holder?: HolderIdentity;
  /** Where images remember their first minute of reads for the next boot (boot.ts); off when absent. */
  readonly bootDir?: string;
}

export class ImageContext {
  readonly counters: ImageCounters = newImageCounters();
  readonly locks: GrainLocks;
  /** Bumped when sizes or the remote change: fetches started before must not fill the cache. */
  epoch = 0;
  mtime: Date;
  readonly timing: Timing;
  /** The checkpoint barrier of a writable page blob, when checkpoints are on. */
  readonly checkpoints: Checkpoints | undefined;

  constructor(
    readonly deps: ImageDeps,
    readonly remote: RemoteBlob,
  ) {
    this.locks = new GrainLocks((idx) => deps.cache.native.revoke(remote.id, idx));
    this.mtime = remote.info.lastModified;
    this.timing = deps.timing ?? SYSTEM_TIMING;
    const cp = deps.checkpoints;
    this.checkpoints =
      cp && cp.keep > 0 && remote.kind === 'page' && remote.ref.snapshot === undefined
        ? new Checkpoints(cp, this.timing.clock, deps.log, `${remote.ref.container}/${remote.ref.name}`)
        : undefined;
  }

  /** Now, as a Date (for mtime). */
  now(): Date {
    return new Date(this.timing.clock.now());
  }

  get id(): number {
    return this.remote.id;
  }
  get size(): number {
    return this.remote.size;
  }
}
