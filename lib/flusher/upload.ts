/* What the page and the block uploads share: their dependencies, and when an uploaded
 * grain may be marked clean. */

import { GrainCache } from '../cache/cache';
import { SECTOR, runs, sectorsOf } from '../cache/sectors';
import { UploadSource } from '../remote/uploads';
import { BlobStore } from '../store/types';

export interface UploaderDeps {
  readonly store: BlobStore;
  readonly cache: GrainCache;
  readonly grainSize: number;
  /** Uploads in flight per image. */
  readonly concurrency: number;
  /** Page uploads read and plan dirty grains this many bytes at a time. */
  readonly windowBytes: number;
}

export const roundUp = (n: number): number => Math.ceil(n / SECTOR) * SECTOR;
export const roundDown = (n: number): number => Math.floor(n / SECTOR) * SECTOR;

/** Whether an uploaded grain ending at byte `end` may be marked clean: not while a
 *  truncate since has cut Azure's part of the image below that end. The next flush cuts
 *  the blob there first (a page blob) or restages from there (a block blob); a grain
 *  marked clean and evicted before then would read as zeros, and the cut would take
 *  its uploaded bytes. Kept dirty, it goes up again after the cut. */
export function mayBeClean(image: UploadSource, end: number): boolean {
  return end <= image.remote.remoteEnd;
}

/** Whether grain `idx` of `image` has dirty sectors at or past byte `size`. */
export function dirtyPast(deps: UploaderDeps, image: UploadSource, idx: number, size: number): boolean {
  const dirty = deps.cache.state(image.remote.id, idx)?.dirty;
  if (!dirty) return false;
  const g = deps.grainSize;
  const firstPast = Math.max(0, Math.ceil((size - idx * g) / SECTOR));
  return runs(dirty, sectorsOf(g)).some(([, to]) => to > firstPast);
}
