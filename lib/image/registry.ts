/* The open images of a mount, one Image per blob, created on first use and kept while
 * the mount runs (an Image is small: the grain data lives in the cache directory). Also
 * what moves or drops an image as a whole: rename, remove, and `blobdisk recover`, which
 * saves and drops the local version of an image whose changes cannot go to Azure. */

import { ImageCounters, addCounters, newImageCounters } from '../metrics';
import { BlobdiskError, isBlobdiskError, isKind } from '../errors';
import { saveLocalVersion } from '../remote/save';
import { BlobInfo, BlobRef, WriteConditions } from '../store/types';
import { Image, ImageDeps } from './image';

const keyOf = (ref: BlobRef): string => `${ref.container}/${ref.name}${ref.snapshot !== undefined ? `\0${ref.snapshot}` : ''}`;

/** What `blobdisk recover` did: nothing (no local changes, no conflict), saved the local
 *  version as a new blob and dropped it here, or dropped it only. */
export interface RecoverResult {
  readonly outcome: 'nothing' | 'saved' | 'discarded';
  /** Bytes not yet in Azure that were dropped (and saved, for 'saved'). */
  readonly dirtyBytes: number;
  /** The blob no longer exists in Azure (the image is gone from the mount too). */
  readonly gone: boolean;
}

export class Images {
  private readonly images = new Map<string, Promise<Image>>();

  constructor(
    private readonly deps: ImageDeps,
    private readonly account: string,
  ) {}

  /** The image of `ref`. With `fresh` (properties just read from Azure) an image already
   *  open is revalidated against them; without, `info` only serves to open a new one
   *  (a listing may be older than what the open image knows). */
  async get(ref: BlobRef, info: BlobInfo, fresh: boolean): Promise<Image> {
    const key = keyOf(ref);
    const existing = this.images.get(key);
    if (existing) {
      const image = await existing;
      if (fresh && image.remote.etag !== info.etag) await image.remote.revalidate(info);
      return image;
    }
    const opening = Image.open(this.deps, this.account, ref, info);
    this.images.set(key, opening);
    opening.catch(() => this.images.delete(key));
    return opening;
  }

  /** The image of `ref` if it was opened before, without asking Azure. */
  async peek(ref: BlobRef): Promise<Image | undefined> {
    return this.images.get(keyOf(ref));
  }

  /** Opens an image that holds dirty grains from an earlier mount and queues its upload. */
  async recover(ref: BlobRef): Promise<void> {
    const info = await this.deps.store.getInfo(ref);
    const image = await this.get(ref, info, true);
    if (image.conflict) throw new BlobdiskError('conflict', image.conflict);
    this.deps.uploads.notify(image);
  }

  /** Resolves a conflict, or refused uploads, of `ref` (`blobdisk recover`): with `to`, first
   *  saves the local version as the new blob `to` of the same container (exists when it
   *  does); then drops the local changes, so the image follows Azure's blob as it is now.
   *  Works on images opened here and on those an earlier mount left dirty that could not be
   *  opened. not-found when neither the cache nor Azure knows `ref`. */
  async recoverLocal(ref: BlobRef, to: string | undefined): Promise<RecoverResult> {
    const { store, cache, map, uploads } = this.deps;
    const azureNow = (): Promise<BlobInfo | undefined> => store.getInfo(ref).catch((e: unknown) => (isKind(e, 'not-found') ? undefined : Promise.reject(e)));
    let image = await this.peek(ref)?.catch(() => undefined);
    const row = map.image(this.account, ref.container, ref.name);
    if (image === undefined && row !== undefined && cache.dirtyGrains(row.id).length > 0) {
      const info = await azureNow();
      if (info !== undefined) image = await this.get(ref, info, true);
    }
    if (image === undefined && (row === undefined || cache.dirtyGrains(row.id).length === 0)) {
      if ((await azureNow()) === undefined) throw new BlobdiskError('not-found', `no image ${keyOf(ref)} in Azure or in the cache`);
      return { outcome: 'nothing', dirtyBytes: 0, gone: false };
    }
    if (image !== undefined && image.conflict === undefined && !image.needsUpload()) return { outcome: 'nothing', dirtyBytes: 0, gone: false };
    const recover = async (): Promise<RecoverResult> => {
      // The grain map row, read now: sizes and the ETag we last knew, also of an image not open.
      const now = map.image(this.account, ref.container, ref.name);
      if (now === undefined) throw new BlobdiskError('not-found', `no image ${keyOf(ref)} in the cache`);
      const dirtyBytes = cache.dirtyOf(now.id).bytes;
      const info = await azureNow();
      if (to !== undefined) {
        const changed = info === undefined || (now.etag !== info.etag && !map.isOurEtag(now.id, info.etag));
        const version = {
          id: now.id, ref, kind: now.kind, size: now.size, remoteEnd: now.remoteEnd ?? Number.MAX_SAFE_INTEGER, azure: info,
          withClean: changed || image?.conflict !== undefined,
        };
        await saveLocalVersion({ store, cache, grainSize: this.deps.grainSize }, version, { container: ref.container, name: to });
      }
      if (image !== undefined && info !== undefined) {
        await image.remote.discardLocal(info);
      } else if (image !== undefined) {
        // The blob is gone: so is the image (handles still open on it fail from now on).
        await image.forget();
        this.images.delete(keyOf(ref));
      } else {
        await cache.dropImage(now.id);
        map.deleteImage(now.id);
      }
      if (image !== undefined) uploads.discarded(image);
      this.deps.log.warn(`${keyOf(ref)}: ${dirtyBytes} bytes of local changes dropped${to !== undefined ? ` after saving the local version as ${ref.container}/${to}` : ''}`);
      return { outcome: to !== undefined ? 'saved' : 'discarded', dirtyBytes, gone: info === undefined };
    };
    return image !== undefined ? uploads.exclusive(image, recover) : recover();
  }

  /** Renames blob `src` to `dest` in the same account, replacing `dest`: a server-side copy,
   *  then the old blob is deleted, so the file is never under neither name. An image of
   *  `src` moves along with its cached and dirty grains (its uploads wait meanwhile and go
   *  to `dest` after): nothing is lost and nothing is uploaded twice. */
  async rename(src: BlobRef, dest: BlobRef): Promise<void> {
    const { store, map, cache, log } = this.deps;
    const image = await this.peek(src);
    if (image?.conflict) throw new BlobdiskError('conflict', image.conflict);
    // A blob another writer holds could be copied but not deleted: refuse before copying.
    if (image?.remote.leaseId === undefined && (await store.getInfo(src)).leased === true) {
      throw new BlobdiskError('busy', `${src.container}/${src.name} is leased by another writer; it cannot be renamed`);
    }
    const move = async (): Promise<WriteConditions> => {
      const replaced = await this.peek(dest);
      // Our own lease on the blob being replaced would refuse the copy.
      if (replaced) await replaced.remote.releaseLease();
      await store.copyBlob(src, dest);
      const info = await store.getInfo(dest);
      if (replaced) {
        await replaced.forget();
        this.images.delete(keyOf(dest));
      } else {
        const row = map.image(this.account, dest.container, dest.name);
        if (row) {
          await cache.dropImage(row.id);
          map.deleteImage(row.id);
        }
      }
      if (image) {
        const conditions = image.remote.movedTo(dest, info);
        this.images.delete(keyOf(src));
        this.images.set(keyOf(dest), Promise.resolve(image));
        return conditions;
      }
      // Not open here: clean grains cached under the old name are dropped (they would be
      // refetched under the new one); dirty ones, of an image recovery could not reopen, stay.
      const row = map.image(this.account, src.container, src.name);
      if (row && cache.dirtyGrains(row.id).length === 0) {
        await cache.dropImage(row.id);
        map.deleteImage(row.id);
      }
      return {};
    };
    const conditions = image ? await this.deps.uploads.exclusive(image, move) : await move();
    if (image) await image.settled();
    try {
      await store.deleteBlob(src, conditions);
    } catch (e) {
      if (!isBlobdiskError(e) || e.kind !== 'not-found') {
        log.warn(`renamed ${src.container}/${src.name} to ${dest.container}/${dest.name}, but deleting the old blob failed (${isBlobdiskError(e) ? e.kind : 'error'}: ${(e as Error).message}); delete it by hand`);
      }
    }
    if (image && conditions.leaseId !== undefined) await image.remote.takeLease();
  }

  /** Deletes the blob and everything the cache holds of it (dirty data too). */
  async remove(image: Image): Promise<void> {
    await image.remove();
    this.images.delete(keyOf(image.ref));
  }

  async all(): Promise<Image[]> {
    return Promise.all(this.images.values());
  }

  /** Counters summed over every image of the mount. */
  async totals(): Promise<ImageCounters> {
    const sum = newImageCounters();
    for (const image of await this.all()) addCounters(sum, image.counters);
    return sum;
  }
}
