/* The one place that stacks blobdisk's layers over a store:
 *   store → grain map → cache → flusher (uploads) → images → namespace
 * lib/mount.ts builds a mount's stack here (over a MeteredStore of Azure), and the test
 * harnesses build theirs here too (over an in-memory store, maybe behind a FaultyStore),
 * so a test exercises the wiring a mount runs. FUSE, the control socket and Azurite stay
 * in lib/mount.ts: they are about serving a stack, not building one. */

import path from 'node:path';
import { GrainCache } from './cache/cache';
import type { FastTable } from './cache/native';
import type { CacheOptions, ReadOptions, SyncMode } from './config';
import { Flusher } from './flusher/flusher';
import { GrainMap } from './grainmap/grainmap';
import { FetchBudget } from './image/image';
import { Images } from './image/registry';
import type { Logger } from './log';
import type { CheckpointOptions } from './remote/checkpoint';
import { Namespace, type NamespaceOptions } from './namespace/namespace';
import type { HolderIdentity } from './remote/holder';
import type { BlobStore } from './store/types';
import { SYSTEM_TIMING, type Timing } from './tunables';

export interface StackOptions {
  readonly cache: CacheOptions;
  /** The FUSE binding's fast path table (lib/cache/native.ts); absent: none. */
  readonly fast?: FastTable;
  readonly read: ReadOptions;
  readonly sync: SyncMode;
  /** How long a write waits for room when the cache is full of dirty data. */
  readonly dirtyWaitMs: number;
  /** Every request to Azure ends within this (--io-timeout); an fsync with --sync cloud gives
   *  up when nothing could be uploaded for as long. */
  readonly ioTimeoutMs?: number;
  readonly writeBackDelayMs: number;
  readonly uploadConcurrency: number;
  readonly namespace: NamespaceOptions;
  /** This machine, as lease ids know it (see GrainMap.leaseIdFor). */
  readonly host: string;
  /** The storage account, to tell apart blobs of accounts that share a cache directory. */
  readonly account: string;
  readonly timing?: Timing;
  /** Crash-consistent checkpoints (--checkpoints); absent or keep 0: none. */
  readonly checkpoints?: CheckpointOptions;
  /** This mount, named in a blob's metadata while it holds the lease (host name, mountpoint). */
  readonly holder?: HolderIdentity;
  /** Images remember their first minute of reads and warm them at the next boot (lib/image/boot.ts). */
  readonly bootPrefetch?: boolean;
}

export interface Stack {
  readonly store: BlobStore;
  readonly map: GrainMap;
  readonly cache: GrainCache;
  readonly flusher: Flusher;
  readonly images: Images;
  readonly namespace: Namespace;
  /** Ranged GETs in flight across the mount (a warm-up waits for room in it). */
  readonly budget: FetchBudget;
  /** Closes every image, stops the flusher, closes the cache and the grain map (not the store). */
  close(): Promise<void>;
}

/** Builds the layers over `store`. Throws what GrainMap.open throws (a cache directory of
 *  another version, a damaged database) before anything else is made. */
export function buildStack(store: BlobStore, o: StackOptions, log: Logger): Stack {
  const timing = o.timing ?? SYSTEM_TIMING;
  const grainSize = o.cache.grainSize;
  const map = GrainMap.open(path.join(o.cache.dir, 'grainmap.db'), grainSize, timing, { log });
  const cache = new GrainCache(o.cache, map, log, timing, o.fast);
  const flusher = new Flusher(store, cache, { grainSize, concurrency: o.uploadConcurrency, delayMs: o.writeBackDelayMs }, log, timing);
  const budget = new FetchBudget(o.read.fetchConcurrency, grainSize);
  const images = new Images(
    {
      store, cache, map, log, grainSize,
      read: o.read,
      budget,
      dirtyWaitMs: o.dirtyWaitMs,
      leaseId: map.leaseIdFor(o.host),
      sync: o.sync,
      ...(o.ioTimeoutMs !== undefined ? { syncStallMs: o.ioTimeoutMs } : {}),
      uploads: flusher,
      timing,
      ...(o.checkpoints !== undefined ? { checkpoints: o.checkpoints } : {}),
      ...(o.holder !== undefined ? { holder: o.holder } : {}),
      ...(o.bootPrefetch === true ? { bootDir: path.join(o.cache.dir, 'boot') } : {}),
    },
    o.account,
  );
  const namespace = new Namespace(store, images, o.namespace, log, timing.clock, timing.tunables);
  let closing: Promise<void> | undefined;
  return {
    store, map, cache, flusher, images, namespace, budget,
    close() {
      closing ??= (async () => {
        for (const image of await images.all()) await image.close();
        budget.buffers.clear();
        flusher.stop();
        await cache.close();
        map.close();
      })();
      return closing;
    },
  };
}
