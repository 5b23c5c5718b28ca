/* The open images of a mount, one Image per blob, created on first use and kept while
 * the mount runs (an Image is small: the grain data lives in the cache directory). */

import { ImageCounters, addCounters, newImageCounters } from '../metrics';
import { BlobInfo, BlobRef } from '../store/types';
import { Image, ImageDeps } from './image';

const keyOf = (ref: BlobRef): string => `${ref.container}/${ref.name}`;

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
      if (fresh && image.etag !== info.etag) await image.revalidate(info);
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
    if (image.conflict) throw new Error(image.conflict);
    this.deps.onDirty(image);
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
