/* `blobdisk diff`: what changed in a page blob since one of its snapshots, for incremental
 * backups. Three ways to find out, and the answer always says which one it used:
 *   service   Get Page Ranges with prevsnapshot: Azure's own diff, pages written or cleared
 *             since the snapshot. Exact on Azure; Azurite ignores the snapshot (DESIGN.md).
 *   listings  the page ranges of the image and of the snapshot, compared: ranges only the
 *             image has are changed, ranges only the snapshot has are cleared, ranges both
 *             have are `unverified` (a backup must copy them too). Two listings, no data.
 *   bytes     as listings, then the ranges both have are read from both and compared in
 *             512-byte pages: exact, at the cost of reading both.
 * auto picks service on Azure and bytes on Azurite (an emulator endpoint). */

import { BlobdiskError } from '../errors';
import type { BlobRef, BlobStore, ByteRange } from '../store/types';
import { differing, intersect, merge, subtract, total } from './ranges';

export type CompareMethod = 'service' | 'listings' | 'bytes';
export const COMPARE_CHOICES = ['auto', 'service', 'listings', 'bytes'] as const;
export type CompareChoice = (typeof COMPARE_CHOICES)[number];

export interface DiffResult {
  readonly method: CompareMethod;
  /** Ranges written since the snapshot (with `bytes`: whose bytes differ). */
  readonly changed: ByteRange[];
  /** Ranges the snapshot has and the image no longer has (cleared or cut off). */
  readonly cleared: ByteRange[];
  /** (listings only) ranges both have, not compared: they may or may not have changed. */
  readonly unverified: ByteRange[];
  /** Bytes read from Azure to compare (bytes only). */
  readonly bytesCompared: number;
}

/** How much of each side one comparison reads (a Put Page's worth). */
const COMPARE_CHUNK = 4 * 1024 * 1024;
const PAGE = 512;

export function methodFor(choice: CompareChoice, store: BlobStore): CompareMethod {
  if (choice !== 'auto') return choice;
  return store.emulator ? 'bytes' : 'service';
}

async function readAll(store: BlobStore, ref: BlobRef, offset: number, length: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const part of await store.read(ref, offset, length)) parts.push(part);
  return Buffer.concat(parts);
}

/** Diffs page blob `ref` (physical size `size`) against its snapshot `since` (of `sinceSize`). */
export async function diffPageBlob(
  store: BlobStore,
  ref: BlobRef,
  size: number,
  since: string,
  sinceSize: number,
  method: CompareMethod,
  onProgress: (compared: number, of: number) => void = () => undefined,
): Promise<DiffResult> {
  const old: BlobRef = { ...ref, snapshot: since };
  if (method === 'service') {
    const d = await store.pageRangesDiff(ref, since, 0, size);
    // Pages past the image's end are gone however Azure reports them.
    const cut = sinceSize > size ? [{ start: size, end: sinceSize }] : [];
    return { method, changed: d.changed, cleared: merge([...d.cleared, ...intersect(cut, await store.pageRanges(old, size, sinceSize))]), unverified: [], bytesCompared: 0 };
  }
  const now = await store.pageRanges(ref, 0, size);
  const then = await store.pageRanges(old, 0, sinceSize);
  const added = subtract(now, then);
  const cleared = subtract(then, now);
  const both = intersect(now, then);
  if (method === 'listings') return { method, changed: added, cleared, unverified: both, bytesCompared: 0 };
  if (method !== 'bytes') throw new BlobdiskError('invalid', `unknown compare method ${String(method)}`);
  const changed: ByteRange[] = [...added];
  const of = total(both);
  let compared = 0;
  for (const r of both) {
    for (let at = r.start; at < r.end; at += COMPARE_CHUNK) {
      const length = Math.min(COMPARE_CHUNK, r.end - at);
      const [a, b] = await Promise.all([readAll(store, ref, at, length), readAll(store, old, at, length)]);
      changed.push(...differing(a, b, at, PAGE));
      compared += length;
      onProgress(compared, of);
    }
  }
  return { method, changed: merge(changed), cleared, unverified: [], bytesCompared: 2 * compared };
}
