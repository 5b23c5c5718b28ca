/* Builds the image stack (grain map, cache, images, flusher) over a store, in a fresh
 * temporary cache directory, with lib/stack.ts as lib/mount.ts does, for unit tests. */

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { GrainCache } from '../../lib/cache/cache';
import type { FastTable } from '../../lib/cache/native';
import { Flusher } from '../../lib/flusher/flusher';
import { GrainMap } from '../../lib/grainmap/grainmap';
import { FetchBudget, Image } from '../../lib/image/image';
import { Images } from '../../lib/image/registry';
import { silentLogger } from '../../lib/log';
import { SyncMode } from '../../lib/config';
import type { CheckpointOptions } from '../../lib/remote/checkpoint';
import { BlobRef, BlobStore } from '../../lib/store/types';
import { buildStack } from '../../lib/stack';
import { SYSTEM_TIMING, type Timing } from '../../lib/tunables';

export interface Harness {
  readonly dir: string;
  readonly map: GrainMap;
  readonly cache: GrainCache;
  readonly images: Images;
  readonly flusher: Flusher;
  /** The mount's budget of ranged GETs in flight. */
  readonly budget: FetchBudget;
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
  /** --io-timeout: with --sync cloud, how long an fsync waits for upload progress. */
  ioTimeoutMs?: number;
  /** The clock and tunables every layer gets (the system's by default). */
  timing?: Timing;
  /** --checkpoints and --checkpoint-interval (none by default). */
  checkpoints?: CheckpointOptions;
  /** Remember each image's first minute of reads and warm them at the next boot (lib/image/boot.ts). */
  bootPrefetch?: boolean;
  /** A fast path table (lib/cache/native.ts), as a mount with the FUSE binding has. */
  fast?: FastTable;
  /** Requests in flight per upload (a mount's default is 8; here 4 unless given). */
  uploadConcurrency?: number;
}

export function harness(store: BlobStore, o: HarnessOptions = {}): Harness {
  const grainSize = o.grainSize ?? 64 * 1024;
  const dir = o.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'blobdisk-img-'));
  const stack = buildStack(
    store,
    {
      cache: { dir, sizeBytes: o.cacheBytes ?? 1024 * grainSize, grainSize },
      ...(o.fast !== undefined ? { fast: o.fast } : {}),
      read: { readAheadGrains: o.readAheadGrains ?? 4, fetchConcurrency: 4, maxFetchBytes: 4 * grainSize },
      sync: o.sync ?? 'local',
      dirtyWaitMs: o.dirtyWaitMs ?? 200,
      ...(o.ioTimeoutMs !== undefined ? { ioTimeoutMs: o.ioTimeoutMs } : {}),
      writeBackDelayMs: o.writeBackDelayMs ?? 10_000,
      uploadConcurrency: o.uploadConcurrency ?? 4,
      namespace: { container: undefined, attrTtlMs: 5_000, readOnly: false, pageBlobPatterns: ['*.img'] },
      account: 'acct',
      host: 'test-host',
      timing: o.timing ?? SYSTEM_TIMING,
      ...(o.checkpoints !== undefined ? { checkpoints: o.checkpoints } : {}),
      ...(o.bootPrefetch === true ? { bootPrefetch: true } : {}),
    },
    silentLogger,
  );
  const { map, cache, images, flusher } = stack;
  return {
    dir, map, cache, images, flusher, budget: stack.budget,
    open: async (ref) => images.get(ref, await store.getInfo(ref), true),
    close: () => stack.close(),
  };
}
