/* `blobdisk diff`: what changed in an image since one of its snapshots, for incremental
 * backups. For a page blob, three ways to find out, and the answer always says which:
 *   service   Get Page Ranges with prevsnapshot: Azure's own diff, pages written or cleared
 *             since the snapshot. Exact on Azure; Azurite ignores the snapshot (DESIGN.md).
 *   listings  the page ranges of the image and of the snapshot, compared: ranges only the
 *             image has are changed, ranges only the snapshot has are cleared, ranges both
 *             have are `unverified` (a backup must copy them too). Two listings, no data.
 *   bytes     as listings, then the ranges both have are read from both and compared in
 *             512-byte pages: exact, at the cost of reading both.
 * auto picks service on Azure and bytes on Azurite (an emulator endpoint). A block blob is
 * diffed by its committed block lists (blocks: blobdisk restages only the blocks a write
 * touches, so a block id at the same offset holds the same bytes), or by bytes. */

import { BlobdiskError } from '../errors';
import type { BlobKind, BlobRef, BlobStore, BlockInfo, ByteRange } from '../store/types';
import { differing, intersect, merge, subtract, total } from './ranges';

export type CompareMethod = 'service' | 'listings' | 'bytes' | 'blocks';
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
/** Chunks compared at once (two GETs each). */
const COMPARE_PARALLEL = 4;
const PAGE = 512;

export function methodFor(choice: CompareChoice, store: BlobStore, kind: BlobKind): CompareMethod {
  if (kind === 'append') throw new BlobdiskError('not-supported', 'blobdisk diff works on page and block blobs, not append blobs');
  if (kind === 'block') {
    if (choice === 'service' || choice === 'listings') throw new BlobdiskError('invalid', `--compare ${choice} is for page blobs; a block blob is compared by blocks (auto) or bytes`);
    return choice === 'bytes' ? 'bytes' : 'blocks';
  }
  if (choice !== 'auto') return choice;
  return store.emulator ? 'bytes' : 'service';
}

/** Committed blocks with their byte ranges. */
function placed(blocks: readonly BlockInfo[]): { key: string; start: number; end: number }[] {
  let at = 0;
  return blocks.map((b) => {
    const start = at;
    at += b.size;
    return { key: `${start}:${b.size}:${b.id}`, start, end: at };
  });
}

/** A block blob against its snapshot by the committed block lists. A blob written in one Put
 *  Blob has no block list: then nothing can be told and all of it is unverified. */
async function diffBlocks(store: BlobStore, ref: BlobRef, size: number, since: string, sinceSize: number): Promise<DiffResult> {
  const [now, then] = await Promise.all([store.blockList(ref), store.blockList({ ...ref, snapshot: since })]);
  const cleared = sinceSize > size ? [{ start: size, end: sinceSize }] : [];
  if ((now.length === 0 && size > 0) || (then.length === 0 && sinceSize > 0)) {
    return { method: 'blocks', changed: [], cleared, unverified: size > 0 ? [{ start: 0, end: size }] : [], bytesCompared: 0 };
  }
  const old = new Set(placed(then).map((b) => b.key));
  const changed = placed(now).filter((b) => !old.has(b.key)).map(({ start, end }) => ({ start, end }));
  return { method: 'blocks', changed: merge(changed), cleared, unverified: [], bytesCompared: 0 };
}

async function readAll(store: BlobStore, ref: BlobRef, offset: number, length: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const part of await store.read(ref, offset, length)) parts.push(part);
  return Buffer.concat(parts);
}

/** Diffs image `ref` (page or block blob of physical size `size`) against its snapshot `since` (of `sinceSize`). */
export async function diffImage(
  store: BlobStore,
  ref: BlobRef,
  kind: BlobKind,
  size: number,
  since: string,
  sinceSize: number,
  method: CompareMethod,
  onProgress: (compared: number, of: number) => void = () => undefined,
): Promise<DiffResult> {
  const old: BlobRef = { ...ref, snapshot: since };
  if (method === 'blocks') return diffBlocks(store, ref, size, since, sinceSize);
  if (method === 'service') {
    const d = await store.pageRangesDiff(ref, since, 0, size);
    // Pages past the image's end are gone however Azure reports them.
    const cut = sinceSize > size ? [{ start: size, end: sinceSize }] : [];
    return { method, changed: d.changed, cleared: merge([...d.cleared, ...intersect(cut, await store.pageRanges(old, size, sinceSize))]), unverified: [], bytesCompared: 0 };
  }
  // A block blob holds every byte of its size.
  const now = kind === 'page' ? await store.pageRanges(ref, 0, size) : size > 0 ? [{ start: 0, end: size }] : [];
  const then = kind === 'page' ? await store.pageRanges(old, 0, sinceSize) : sinceSize > 0 ? [{ start: 0, end: sinceSize }] : [];
  const added = subtract(now, then);
  const cleared = subtract(then, now);
  const both = intersect(now, then);
  if (method === 'listings') return { method, changed: added, cleared, unverified: both, bytesCompared: 0 };
  if (method !== 'bytes') throw new BlobdiskError('invalid', `unknown compare method ${String(method)}`);
  const changed: ByteRange[] = [...added];
  const chunks: ByteRange[] = [];
  for (const r of both) for (let at = r.start; at < r.end; at += COMPARE_CHUNK) chunks.push({ start: at, end: Math.min(r.end, at + COMPARE_CHUNK) });
  const of = total(both);
  let compared = 0;
  let next = 0;
  // A few chunks at a time: one GET after another leaves Azure (and Azurite) mostly idle.
  const worker = async (): Promise<void> => {
    for (let c = chunks[next++]; c !== undefined; c = chunks[next++]) {
      const length = c.end - c.start;
      const [a, b] = await Promise.all([readAll(store, ref, c.start, length), readAll(store, old, c.start, length)]);
      changed.push(...differing(a, b, c.start, PAGE));
      compared += length;
      onProgress(compared, of);
    }
  };
  await Promise.all(Array.from({ length: COMPARE_PARALLEL }, worker));
  return { method, changed: merge(changed), cleared, unverified: [], bytesCompared: 2 * compared };
}
