/* One open image: a blob seen as a file. This is the facade the namespace and the FUSE
 * callbacks use; the work is done by its parts, which share an ImageContext:
 *   reader.ts      byte ranges to grains, staged grains, read-ahead
 *   fetcher.ts     single-flight ranged GETs of missing grains, released early
 *   writer.ts      writes into the cache, partial sectors, truncate
 *   grain-lock.ts  one lock per grain for writes, fills and cuts
 * The grain states live in the cache (lib/cache/cache.ts); what Azure holds of the blob,
 * the sizes and the lease in RemoteBlob (lib/remote/remote.ts). The image is an
 * UploadSource: the uploader (lib/flusher) reaches it only through lib/remote/uploads.ts. */

import { BlobInfo, BlobRef } from '../store/types';
import { ImageCounters } from '../metrics';
import { Checkpoints } from '../remote/checkpoint';
import { RemoteBlob } from '../remote/remote';
import { UploadSource } from '../remote/uploads';
import { BootTrace, bootFile } from './boot';
import { FetchBudget, ImageContext, ImageDeps } from './context';
import type { WarmProgress } from './warm';
import { Fetcher } from './fetcher';
import { Reader } from './reader';
import { Writer } from './writer';

export { FetchBudget };
export type { ImageDeps };

export class Image implements UploadSource {
  private readonly ctx: ImageContext;
  private readonly fetcher: Fetcher;
  private readonly reader: Reader;
  private readonly writer: Writer;
  /** Its first minute of reads, and the warm-up from the last one (boot.ts). */
  private boot: BootTrace | undefined;

  private constructor(
    private readonly deps: ImageDeps,
    readonly remote: RemoteBlob,
  ) {
    this.ctx = new ImageContext(deps, remote);
    this.fetcher = new Fetcher(this.ctx);
    this.reader = new Reader(this.ctx, this.fetcher);
    this.writer = new Writer(this.ctx, this.reader, this.fetcher, () => deps.uploads.notify(this));
    deps.cache.native.listen(remote.id, {
      wrote: (grains, offset, length) => this.writer.landedNatively(grains, offset, length),
      read: (grains, count, bytes, offset, length) => {
        const g = deps.grainSize;
        for (const idx of grains) this.boot?.note(idx * g, 1);
        this.reader.readNatively(count, bytes, offset, length);
      },
    });
    // The blob changed elsewhere: what was fetched or staged under the old ETag is stale.
    remote.onChanged(() => {
      this.ctx.epoch++;
      this.reader.unstageAll();
    });
  }

  /** The image of `ref` as Azure described it in `info`; drops cached grains of an older ETag. */
  static async open(deps: ImageDeps, account: string, ref: BlobRef, info: BlobInfo): Promise<Image> {
    const remote = await RemoteBlob.open(deps, account, ref, info);
    const image = new Image(deps, remote);
    await remote.revalidate(info);
    if (deps.bootDir !== undefined && ref.snapshot === undefined) {
      const { cache, budget, log, grainSize } = deps;
      image.boot = new BootTrace({ cache, budget, log, grainSize, clock: image.ctx.timing.clock, file: bootFile(deps.bootDir, account, ref) }, image);
    }
    return image;
  }

  /** The checkpoint barrier, when the image takes checkpoints (see lib/remote/checkpoint.ts). */
  get checkpoints(): Checkpoints | undefined {
    return this.ctx.checkpoints;
  }

  get counters(): ImageCounters {
    return this.ctx.counters;
  }
  get id(): number {
    return this.remote.id;
  }
  /** The blob behind the image (it changes when the file is renamed). */
  get ref(): BlobRef {
    return this.remote.ref;
  }
  get size(): number {
    return this.remote.size;
  }
  get kind(): BlobInfo['kind'] {
    return this.remote.kind;
  }
  /** When the image was last written here, or Azure's Last-Modified when it was opened. */
  get mtime(): Date {
    return this.ctx.mtime;
  }
  /** Why the image cannot be written (see RemoteBlob.conflict). */
  get conflict(): string | undefined {
    return this.remote.conflict;
  }

  /** Reads `length` bytes at `offset` into `target` (from its start). Returns the bytes
   *  read: fewer at the end of the image, 0 past it. Never-written ranges read as zeros.
   *  Rejects only with BlobdiskError: not-found if the blob vanished, unavailable after retries. */
  readInto(target: Buffer, offset: number, length: number): Promise<number> {
    this.boot?.note(offset, length);
    return this.reader.readInto(target, offset, length);
  }

  /** Reads `length` bytes at `offset` of the image (see readInto). */
  read(offset: number, length: number): Promise<Buffer> {
    this.boot?.note(offset, length);
    return this.reader.read(offset, length);
  }

  /** The warm-up from its last boot's reads, if one ran (boot.ts). */
  get bootPrefetch(): WarmProgress | undefined {
    return this.boot?.progress;
  }

  /** Fetches grain `idx` into the cache unless it is there (see Reader.warm). */
  warm(idx: number): Promise<boolean> {
    return this.reader.warm(idx);
  }

  /** The image's current bytes for an upload: like read(), without counting as a reader. */
  readForUpload(offset: number, length: number): Promise<Buffer> {
    return this.reader.readForUpload(offset, length);
  }

  /** Serves a read at once when every grain it touches is staged and warm: the bytes
   *  read, or undefined when the read needs readInto(). */
  readNow(target: Buffer, offset: number, length: number): number | undefined {
    this.boot?.note(offset, length);
    return this.reader.readNow(target, offset, length);
  }

  /** Writes `data` at `offset`, growing the image when it ends past it. Resolves once the
   *  bytes are in the cache and the grain map has recorded them (not yet in Azure).
   *  conflict on a conflict, too-large past the page-blob limit, no-space when the cache stays full
   *  of data not yet uploaded. */
  write(data: Buffer, offset: number): Promise<number> {
    return this.writer.write(data, offset);
  }

  /** The common case of write(), done at once; undefined when the write needs write(). */
  writeNow(data: Buffer, offset: number): number | undefined {
    return this.writer.writeNow(data, offset);
  }

  /** Makes [offset, offset + length) read as zeros, keeping the size (guest discard): on a
   *  page blob the range becomes Clear Pages at upload. Rejects as write() does. */
  zero(offset: number, length: number): Promise<void> {
    return this.writer.zero(offset, length);
  }

  /** Sets the image's size. Shrinking drops what lies past the end (also data not yet
   *  uploaded); growing reads as zeros. Azure follows when the flusher runs. */
  truncate(size: number): Promise<void> {
    return this.writer.truncate(size);
  }

  /** fsync/fdatasync: with --sync local, what was written is durable on local disk (and
   *  uploaded later, also after a crash); with --sync cloud, it is in Azure. */
  async fsync(): Promise<void> {
    await this.deps.cache.sync(this.id);
    const cp = this.ctx.checkpoints;
    if (cp && !cp.open && !this.remote.conflict) {
      // The grains dirty now, with their generations, taken at once: the image at this fsync.
      const dirty = new Map<number, number>();
      for (const idx of this.deps.cache.dirtyGrains(this.id)) dirty.set(idx, this.deps.cache.state(this.id, idx)?.gen ?? 0);
      if (cp.fsynced(dirty)) {
        // Writes to the barrier's grains wait from now on (Writer), so none may land natively.
        this.deps.cache.native.revokeImage(this.id);
        this.deps.uploads.notify(this);
      }
    }
    if (this.deps.sync === 'cloud') await this.deps.uploads.flush([this], this.deps.syncStallMs !== undefined ? { stallMs: this.deps.syncStallMs } : {});
  }

  /** Deletes the blob in Azure and forgets it here, dirty data included. */
  async remove(): Promise<void> {
    this.ctx.epoch++;
    await this.remote.remove();
  }

  /** Another blob replaced this one (a rename onto its name): what the cache holds of it
   *  goes, and handles still open on it fail from now on. */
  async forget(): Promise<void> {
    this.ctx.epoch++;
    await this.remote.forget();
  }

  /** Resolves when the fetches under way (possibly from the blob's old name) are done. */
  settled(): Promise<void> {
    return this.fetcher.settled();
  }

  /** Bytes of this image in the cache directory. */
  cachedBytes(): number {
    return this.deps.cache.cachedBytes(this.id);
  }

  /** Whether anything (data or a size change) waits for upload. */
  needsUpload(): boolean {
    return this.remote.needsUpload();
  }

  /** Lets fetches under way store their grains, and stops the lease timer (the mount is
   *  going away; the lease itself is released by RemoteBlob.releaseLease()). */
  async close(): Promise<void> {
    this.remote.lease.drop();
    await this.boot?.close();
    await this.fetcher.close();
  }
}
