/* Saving the local version of an image as a new blob (`blobdisk recover --to`): what Azure
 * holds of the image where the cache holds nothing, with every cached sector laid over it.
 * A page blob is created empty and gets Azure's allocated pages (up to what still belongs to
 * the image), then the cached sectors, by Put Page; a block blob is built grain by grain as
 * staged blocks and committed once. Azure's bytes are read with If-Match, so a change under
 * us fails instead of mixing versions. Not a server-side Copy Blob: on Azurite 3.35 Put Page
 * into such a copy of a page blob also changed the source. The
 * new blob is create-only: a name that exists is refused before anything is written.
 * When Azure's blob changed elsewhere (a conflict) or is gone, its old bytes survive only
 * in the cache: clean cached grains are then part of the local version too. */

import { GrainCache } from '../cache/cache';
import { SECTOR, runs, sectorsOf } from '../cache/sectors';
import { BlobdiskError, isKind } from '../errors';
import { BlobInfo, BlobKind, BlobRef, BlobStore, MAX_COMMITTED_BLOCKS, MAX_PUT_PAGE_BYTES } from '../store/types';
import { LOGICAL_SIZE_KEY, logicalSizeText } from './remote';

export interface LocalVersion {
  /** The image's grain-map id. */
  readonly id: number;
  readonly ref: BlobRef;
  readonly kind: BlobKind;
  /** The image's size here. */
  readonly size: number;
  /** Bytes of Azure's blob that still belong to the image (a shrink here cut the rest). */
  readonly remoteEnd: number;
  /** Azure's blob now, or undefined when it is gone. */
  readonly azure: BlobInfo | undefined;
  /** Take clean cached grains too (Azure's blob changed: they hold the old bytes). */
  readonly withClean: boolean;
}

export interface SaveDeps {
  readonly store: BlobStore;
  readonly cache: GrainCache;
  readonly grainSize: number;
}

/** Writes `v` as the new blob `dest` (same container). Returns the bytes taken from the
 *  cache. exists when `dest` exists; invalid for an append blob. */
export async function saveLocalVersion(deps: SaveDeps, v: LocalVersion, dest: BlobRef): Promise<number> {
  const { store } = deps;
  if (v.kind === 'append') throw new BlobdiskError('invalid', `${v.ref.name} is an append blob, which blobdisk only reads: there is nothing local to save`);
  try {
    await store.getInfo(dest);
    throw new BlobdiskError('exists', `${dest.container}/${dest.name} exists already; pick another name for --to`);
  } catch (e) {
    if (!isKind(e, 'not-found')) throw e;
  }
  const azureEnd = v.azure !== undefined && v.azure.kind === v.kind ? Math.min(v.remoteEnd, v.azure.size) : 0;
  try {
    return await (v.kind === 'page' ? savePages(deps, v, dest, azureEnd) : saveBlocks(deps, v, dest, azureEnd));
  } catch (e) {
    // A half-written copy must not stand in the way of the next try (its name would exist).
    if (!isKind(e, 'exists')) await store.deleteBlob(dest).catch(() => undefined);
    throw e;
  }
}

/** The cached sectors of grain `idx` (clipped to the image's size) as [offset in the grain, bytes]. */
async function cachedRuns(deps: SaveDeps, v: LocalVersion, idx: number): Promise<{ offset: number; data: Buffer }[]> {
  const { cache, grainSize } = deps;
  const state = cache.state(v.id, idx);
  if (state === undefined || (state.dirty === null && !v.withClean)) return [];
  const length = Math.min(grainSize, v.size - idx * grainSize);
  if (length <= 0) return [];
  const spans: [number, number][] = state.valid === null ? [[0, sectorsOf(length)]] : runs(state.valid, sectorsOf(length));
  const out: { offset: number; data: Buffer }[] = [];
  for (const [first, end] of spans) {
    const offset = first * SECTOR;
    const data = Buffer.alloc(Math.min(end * SECTOR, length) - offset);
    // false: a clean grain failed its checksum and was dropped; Azure's bytes stay there.
    if (!(await cache.read(v.id, idx, offset, data.length, data, 0))) return [];
    out.push({ offset, data });
  }
  return out;
}

function grainCount(deps: SaveDeps, v: LocalVersion): number {
  return Math.ceil(v.size / deps.grainSize);
}

async function savePages(deps: SaveDeps, v: LocalVersion, dest: BlobRef, azureEnd: number): Promise<number> {
  const { store, grainSize } = deps;
  const metadata: Record<string, string> = { ...(v.azure?.metadata ?? {}) };
  delete metadata[LOGICAL_SIZE_KEY];
  const text = logicalSizeText(v.size);
  if (text !== undefined) metadata[LOGICAL_SIZE_KEY] = text;
  const size = Math.ceil(v.size / SECTOR) * SECTOR;
  await store.createPageBlob(dest, size, { metadata });
  if (azureEnd > 0 && v.azure !== undefined) {
    // Azure's pages, read with If-Match: a change under us fails instead of mixing versions.
    const etag = v.azure.etag;
    for (const range of await store.pageRanges(v.ref, 0, azureEnd, { etag })) {
      for (let at = range.start; at < range.end; at += MAX_PUT_PAGE_BYTES) {
        const length = Math.min(MAX_PUT_PAGE_BYTES, range.end - at);
        const data = Buffer.alloc(Math.ceil(length / SECTOR) * SECTOR);
        let got = 0;
        for await (const chunk of await store.read(v.ref, at, length, { etag })) got += chunk.copy(data, got);
        await store.putPages(dest, at, data);
      }
    }
  }
  let taken = 0;
  for (let idx = 0; idx < grainCount(deps, v); idx++) {
    for (const { offset, data } of await cachedRuns(deps, v, idx)) {
      // Put Page takes whole sectors: the image's last partial sector is padded with zeros.
      const padded = data.length % SECTOR === 0 ? data : Buffer.concat([data, Buffer.alloc(SECTOR - (data.length % SECTOR))]);
      for (let at = 0; at < padded.length; at += MAX_PUT_PAGE_BYTES) {
        await store.putPages(dest, idx * grainSize + offset + at, padded.subarray(at, at + MAX_PUT_PAGE_BYTES));
      }
      taken += data.length;
    }
  }
  return taken;
}

async function saveBlocks(deps: SaveDeps, v: LocalVersion, dest: BlobRef, azureEnd: number): Promise<number> {
  const { store, grainSize } = deps;
  const count = grainCount(deps, v);
  if (count > MAX_COMMITTED_BLOCKS) throw new BlobdiskError('too-large', `${v.ref.name} has ${count} grains, more than the ${MAX_COMMITTED_BLOCKS} blocks a block blob holds`);
  const ids: string[] = [];
  let taken = 0;
  for (let idx = 0; idx < count; idx++) {
    const start = idx * grainSize;
    const grain = Buffer.alloc(Math.min(grainSize, v.size - start));
    const fromAzure = Math.min(grain.length, azureEnd - start);
    if (fromAzure > 0 && v.azure !== undefined) {
      let at = 0;
      for await (const chunk of await store.read(v.ref, start, fromAzure, { etag: v.azure.etag })) at += chunk.copy(grain, at);
    }
    for (const { offset, data } of await cachedRuns(deps, v, idx)) {
      data.copy(grain, offset);
      taken += data.length;
    }
    const id = Buffer.from(`recover-${String(idx).padStart(8, '0')}`).toString('base64');
    await store.stageBlock(dest, id, grain);
    ids.push(id);
  }
  if (ids.length === 0) await store.createBlockBlob(dest, { metadata: { ...(v.azure?.metadata ?? {}) } });
  else await store.commitBlockList(dest, ids, { metadata: { ...(v.azure?.metadata ?? {}) } });
  return taken;
}
