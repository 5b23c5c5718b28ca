/* The flusher: uploads, in the background, what writes left dirty in the cache. It is
 * the Uploads of lib/remote/uploads.ts: images tell it when they have something to upload
 * and it works on their RemoteBlob, the cache and their bytes, never on lib/image.
 *
 * An image is queued when it gets something to upload and flushed after a short delay
 * (so that neighbouring writes share requests), or at once when someone waits for it
 * (fsync with --sync cloud, `blobdisk flush`, unmount). One flush of an image takes the
 * lease, then uploads a page blob (page-upload.ts) or a block blob (block-upload.ts);
 * after that each grain whose generation did not move is marked clean; a grain written
 * again meanwhile stays dirty and goes in the next flush. Flushes run one image at a time.
 *
 *   failure                               what happens
 *   not-found / busy / stale              the blob vanished, or someone else holds it: the image is
 *                                         in conflict, nothing is overwritten, its dirty data stays
 *                                         in the cache, status says so; the image leaves the queue
 *   denied / invalid / too-large /        retrying cannot fix it (a permission, a SAS that expired, a
 *     read-only / not-supported           request Azure will never take): uploads of the image stop,
 *                                         logged once as an error, status says why; the data stays;
 *                                         a `blobdisk flush` (or the next mount) tries once more
 *   anything else (unavailable,           retried with backoff from minBackoffMs doubling up to
 *     failed)                             maxBackoffMs, for as long as Azure stays away; logged
 *   the image is held (a rename)          skipped; looked at again after heldRetryMs
 *   its changes were dropped              discarded(): out of the queue, backoff and refusal forgotten
 *     (`blobdisk recover`, while held)
 * The numbers are Tunables (lib/tunables.ts); time comes from the injected Clock. */

import { GrainCache } from '../cache/cache';
import { BlobdiskError, isBlobdiskError, isKind } from '../errors';
import { Logger } from '../log';
import { FlushOptions, FlushProgress, UploadSource, Uploads } from '../remote/uploads';
import { BlobStore } from '../store/types';
import { Timer } from '../clock';
import { SYSTEM_TIMING, Timing } from '../tunables';
import { BlockUploader } from './block-upload';
import { takeCheckpoint } from './checkpoint';
import { PageUploader } from './page-upload';

export interface FlusherOptions {
  readonly grainSize: number;
  /** Uploads in flight per image. */
  readonly concurrency: number;
  /** How long dirty data waits before a background flush, so writes can coalesce. */
  readonly delayMs: number;
}

export type { FlushProgress };

export class Flusher implements Uploads {
  private readonly queued = new Set<UploadSource>();
  private readonly backoff = new Map<UploadSource, { failures: number; until: number }>();
  private timer: Timer | undefined;
  private timerAt = 0;
  private running: Promise<void> | undefined;
  private urgent = false;
  private stopped = false;
  /** When each queued image was last written (ms). */
  private readonly lastWrite = new Map<UploadSource, number>();
  /** Images no upload may start for (a rename is moving their blob). */
  private readonly held = new Set<UploadSource>();
  /** The upload under way, if any. */
  private flushing: { image: UploadSource; done: Promise<void> } | undefined;

  /** Images whose uploads Azure refused for a reason retrying cannot fix (a permission, an
   *  invalid request): not retried until a flush asks again (or the next mount). */
  private readonly refused = new Map<UploadSource, string>();
  private readonly pages: PageUploader;
  private readonly blocks: BlockUploader;

  constructor(
    private readonly store: BlobStore,
    private readonly cache: GrainCache,
    private readonly options: FlusherOptions,
    private readonly log: Logger,
    private readonly timing: Timing = SYSTEM_TIMING,
  ) {
    const deps = { store, cache, grainSize: options.grainSize, concurrency: options.concurrency, windowBytes: timing.tunables.uploadWindowBytes };
    this.pages = new PageUploader(deps);
    this.blocks = new BlockUploader(deps);
  }

  /** The image has something to upload. Uploads wait until it has been quiet for the
   *  write-back delay, so a burst of writes is acknowledged at local speed and goes up
   *  after; see due(). */
  notify(image: UploadSource): void {
    if (this.refused.has(image)) return;
    this.queued.add(image);
    this.lastWrite.set(image, this.timing.clock.now());
    this.schedule(this.underPressure() ? 0 : this.options.delayMs);
  }

  /** Half the cache is dirty: writes would soon wait for room. */
  private underPressure(): boolean {
    return this.cache.stats.dirtyBytes * 2 >= this.cache.sizeBytes;
  }

  /** Whether the image's upload should start now: it has been quiet for the write-back
   *  delay, or its oldest change has waited maxAgeFactor delays (a writer that never
   *  pauses), or half the cache is dirty (writes would soon wait for room), or someone
   *  waits for it (flush, fsync with --sync cloud, unmount). */
  private due(image: UploadSource, now: number): boolean {
    // An open checkpoint holds back every write made after its fsync: close it soon.
    if (this.urgent || image.checkpoints?.open) return true;
    const delay = this.options.delayMs;
    if (now - (this.lastWrite.get(image) ?? 0) >= delay) return true;
    const since = this.cache.dirtyOf(image.remote.id).since;
    const { minMaxAgeMs, maxAgeFactor } = this.timing.tunables;
    if (since > 0 && now - since >= Math.max(minMaxAgeMs, delay * maxAgeFactor)) return true;
    return this.underPressure();
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    const at = this.timing.clock.now() + ms;
    if (this.timer && this.timerAt <= at) return;
    this.timer?.cancel();
    this.timerAt = at;
    this.timer = this.timing.clock.timeout(() => {
      this.timer = undefined;
      void this.run();
    }, ms);
  }

  private run(): Promise<void> {
    this.running ??= this.loop().finally(() => {
      this.running = undefined;
      if (this.queued.size > 0) this.schedule(this.nextAttemptIn());
    });
    return this.running;
  }

  private nextAttemptIn(): number {
    // Held images are skipped: do not spin on them while a rename copies their blob.
    if ([...this.queued].every((i) => this.held.has(i))) return this.timing.tunables.heldRetryMs;
    const now = this.timing.clock.now();
    // An image is looked at again once its backoff is over and it is due, not when only one
    // of the two holds: a backoff that ran out before the write-back delay of a later write
    // would otherwise have the loop look at it again and again, at once, in a busy loop.
    let soonest = Number.POSITIVE_INFINITY;
    for (const image of this.queued) {
      if (this.held.has(image)) {
        soonest = Math.min(soonest, this.timing.tunables.heldRetryMs);
        continue;
      }
      const backoff = (this.backoff.get(image)?.until ?? now) - now;
      soonest = Math.min(soonest, Math.max(backoff, this.dueIn(image, now)));
    }
    return Math.max(0, Number.isFinite(soonest) ? soonest : 0);
  }

  /** How long until due(image) holds (0 when it holds now). */
  private dueIn(image: UploadSource, now: number): number {
    if (this.urgent || image.checkpoints?.open || this.underPressure()) return 0;
    const delay = this.options.delayMs;
    let at = (this.lastWrite.get(image) ?? 0) + delay;
    const since = this.cache.dirtyOf(image.remote.id).since;
    const { minMaxAgeMs, maxAgeFactor } = this.timing.tunables;
    if (since > 0) at = Math.min(at, since + Math.max(minMaxAgeMs, delay * maxAgeFactor));
    return Math.max(0, at - now);
  }

  /** One pass over the images that are due; run() schedules the next one. */
  private async loop(): Promise<void> {
    const now = this.timing.clock.now();
    for (const image of this.queued) if (image.remote.conflict) this.forget(image);
    const ready = [...this.queued].filter((i) => (this.backoff.get(i)?.until ?? 0) <= now && this.due(i, now));
    for (const image of ready) {
      if (this.stopped) return;
      if (this.held.has(image)) continue;
      try {
        const done = this.pass(image);
        this.flushing = { image, done };
        await done.finally(() => (this.flushing = undefined));
        this.backoff.delete(image);
        if (!image.remote.needsUpload() && !image.checkpoints?.open) {
          this.queued.delete(image);
          this.lastWrite.delete(image);
        }
      } catch (e) {
        this.failed(image, e);
      }
    }
  }

  /** Stops tracking an image whose changes cannot go up (a conflict). */
  private forget(image: UploadSource): void {
    this.queued.delete(image);
    this.lastWrite.delete(image);
    this.backoff.delete(image);
  }

  private failed(image: UploadSource, e: unknown): void {
    const name = `${image.remote.ref.container}/${image.remote.ref.name}`;
    if (isKind(e, 'denied', 'invalid', 'too-large', 'read-only', 'not-supported')) {
      const reason = `uploads of ${name} stopped: ${e.message}; its changes stay in the cache, and blobdisk flush (or the next mount) tries again`;
      if (!this.refused.has(image)) this.log.error(reason);
      this.refused.set(image, reason);
      this.forget(image);
      return;
    }
    if (isBlobdiskError(e) && (e.kind === 'not-found' || e.kind === 'busy' || e.kind === 'stale')) {
      image.remote.setConflict(image.remote.conflict ?? `cannot upload to ${name} (${e.kind}: ${e.message}); its changes stay in the cache`);
      this.forget(image);
      return;
    }
    const b = this.backoff.get(image) ?? { failures: 0, until: 0 };
    b.failures++;
    const { minBackoffMs, maxBackoffMs } = this.timing.tunables;
    const wait = Math.min(maxBackoffMs, minBackoffMs * 2 ** (b.failures - 1));
    b.until = this.timing.clock.now() + wait;
    this.backoff.set(image, b);
    const code = isBlobdiskError(e) ? e.kind : 'error';
    this.log.warn(`uploading ${name} failed (${code}: ${(e as Error).message}); trying again in ${(wait / 1000).toFixed(1)} s (attempt ${b.failures})`);
  }

  discarded(image: UploadSource): void {
    this.forget(image);
    this.refused.delete(image);
  }

  /** Runs `fn` while no upload of `image` is under way or may start; uploads resume after. */
  async exclusive<T>(image: UploadSource, fn: () => Promise<T>): Promise<T> {
    if (this.held.has(image)) throw new BlobdiskError('busy', `${image.remote.ref.container}/${image.remote.ref.name} is being moved`);
    this.held.add(image);
    try {
      while (this.flushing?.image === image) await this.flushing.done.catch(() => undefined);
      return await fn();
    } finally {
      this.held.delete(image);
      if (image.remote.needsUpload()) this.notify(image);
    }
  }

  /** One pass over the image, as the background loop makes it: uploads everything it holds
   *  dirty now, once, without retries or bookkeeping of the queue; rejects with what failed. */
  async pass(image: UploadSource): Promise<void> {
    const cp = image.checkpoints;
    if (!image.remote.needsUpload() && !cp?.open) return;
    await image.remote.takeLease();
    try {
      // Asked per grain as its window is read too: a checkpoint may open while this runs.
      if (image.remote.kind === 'page') await this.pages.upload(image, cp && ((idx) => cp.mayUpload(idx)));
      else if (image.remote.kind === 'block') await this.blocks.upload(image);
      else throw new BlobdiskError('read-only', `${image.remote.ref.name} is an append blob`);
    } finally {
      // Also after a failure: writes waiting for grains that did go up go on.
      cp?.progress((idx) => this.cache.state(image.remote.id, idx));
    }
    // The grains of the checkpoint's fsync are in Azure: its snapshot, then the held-back rest.
    if (cp?.open && cp.ready && image.remote.sizeSynced()) {
      await takeCheckpoint(this.store, image, cp, this.log);
      if (image.remote.needsUpload()) this.notify(image);
    }
  }

  /** Resolves once everything dirty in `images` now is in Azure. `onProgress` sees the
   *  dirty bytes left. With `stallMs`, gives up (unavailable) when nothing got uploaded for that
   *  long; a conflict fails at once. */
  async flush(images: readonly UploadSource[], options: FlushOptions = {}): Promise<void> {
    const targets = images.filter((i) => i.remote.needsUpload() || this.queued.has(i) || i.checkpoints?.open);
    // Asked for explicitly: refused uploads get another try (and fail the flush at once again).
    for (const image of targets) this.refused.delete(image);
    const gens = new Map<UploadSource, Map<number, number>>();
    for (const image of targets) {
      const m = new Map<number, number>();
      for (const idx of this.cache.dirtyGrains(image.remote.id)) m.set(idx, this.cache.state(image.remote.id, idx)?.gen ?? 0);
      gens.set(image, m);
      this.queued.add(image);
    }
    const left = (): number => targets.reduce((n, i) => n + this.cache.dirtyOf(i.remote.id).bytes, 0);
    const startBytes = left();
    const isDone = (image: UploadSource): boolean => {
      if (!image.remote.sizeSynced()) return false;
      // An open checkpoint holds back later writes, and ends with its snapshot.
      if (image.checkpoints?.open) return false;
      for (const [idx, gen] of gens.get(image) ?? []) {
        const state = this.cache.state(image.remote.id, idx);
        // Written again since the call is fine, once the bytes of the call went up.
        if (state?.dirty && state.uploadedGen < gen) return false;
      }
      return true;
    };
    let lastProgress = this.timing.clock.now();
    let lastLeft = startBytes;
    this.urgent = true;
    try {
      for (;;) {
        const conflicted = targets.find((i) => i.remote.conflict);
        if (conflicted) throw new BlobdiskError('conflict', conflicted.remote.conflict ?? 'conflict');
        const refused = targets.find((i) => this.refused.has(i));
        if (refused) throw new BlobdiskError('denied', this.refused.get(refused) ?? 'uploads refused');
        if (targets.every(isDone)) {
          options.onProgress?.({ dirtyBytes: left(), startBytes });
          return;
        }
        for (const image of targets) this.backoff.delete(image);
        if (!this.running) void this.run();
        await this.timing.clock.sleep(this.timing.tunables.flushPollMs);
        const now = left();
        options.onProgress?.({ dirtyBytes: now, startBytes });
        if (now < lastLeft) lastProgress = this.timing.clock.now();
        lastLeft = now;
        if (options.stallMs !== undefined && this.timing.clock.now() - lastProgress > options.stallMs) {
          throw new BlobdiskError('unavailable', `nothing could be uploaded for ${Math.round(options.stallMs / 1000)} s; ${now} bytes stay dirty`);
        }
      }
    } finally {
      this.urgent = false;
    }
  }

  /** Why Azure refused the image's uploads, while they are stopped; for status. */
  refusedOf(image: UploadSource): string | undefined {
    return this.refused.get(image);
  }

  /** Dirty bytes and the oldest dirty age of an image, for status. */
  dirtyOf(image: UploadSource): { bytes: number; since: number } {
    return this.cache.dirtyOf(image.remote.id);
  }

  stop(): void {
    this.stopped = true;
    this.timer?.cancel();
    this.timer = undefined;
  }
}
