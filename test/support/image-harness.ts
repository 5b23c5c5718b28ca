/* Builds the image stack (grain map, cache, images, flusher) over a store, in a fresh
 * temporary cache directory, the way lib/mount.ts does, for unit tests. */

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { GrainCache } from '../../lib/cache/cache';
import { Flusher } from '../../lib/flusher/flusher';
import { GrainMap } from '../../lib/grainmap/grainmap';
import { FetchBudget, Image } from '../../lib/image/image';
import { Images } from '../../lib/image/registry';
import { silentLogger } from '../../lib/log';
import { SyncMode } from '../../lib/config';
import { BlobRef, BlobStore } from '../../lib/store/types';
import { SYSTEM_TIMING, type Timing } from '../../lib/tunables';

export interface Harness {
  readonly dir: string;
  readonly map: GrainMap;
  readonly cache: GrainCache;
  readonly images: Images;
  readonly flusher: Flusher;
  open(ref: BlobRef): Promise<Image>;
  close(): Promise<void>;
}

export interface HarnessOptions {
  grainSize?: number;
  cacheBytes?: number;
  readAheadGrains?: number;
  dir?: string;
  sync?: SyncMode;
  dirtyWaitMs?: number;
  writeBackDelayMs?: number;
  /** The clock and tunables every layer gets (the system's by default). */
  timing?: Timing;
}

export function harness(store: BlobStore, o: HarnessOptions = {}): Harness {
  const grainSize = o.grainSize ?? 64 * 1024;
  const dir = o.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'blobdisk-img-'));
  const timing = o.timing ?? SYSTEM_TIMING;
  const map = GrainMap.open(path.join(dir, 'grainmap.db'), grainSize, timing);
  const cache = new GrainCache({ dir, sizeBytes: o.cacheBytes ?? 1024 * grainSize, grainSize }, map, silentLogger, timing);
  const flusher = new Flusher(store, cache, { grainSize, concurrency: 4, delayMs: o.writeBackDelayMs ?? 10_000 }, silentLogger, timing);
  const images = new Images(
    {
      store, cache, map, log: silentLogger, grainSize,
      read: { readAheadGrains: o.readAheadGrains ?? 4, fetchConcurrency: 4, maxFetchBytes: 4 * grainSize },
      budget: new FetchBudget(4),
      dirtyWaitMs: o.dirtyWaitMs ?? 200,
      leaseId: map.leaseId(),
      sync: o.sync ?? 'local',
      uploads: flusher,
      timing,
    },
    'acct',
  );
  return {
    dir, map, cache, images, flusher,
    open: async (ref) => images.get(ref, await store.getInfo(ref), true),
    close: async () => {
      flusher.stop();
      for (const image of await images.all()) await image.close();
      await cache.close();
      map.close();
    },
  };
}
