/* The flusher: uploads, in the background, what writes left dirty in the cache.
 *
 * An image is queued when it gets something to upload and flushed after a short delay
 * (so that neighbouring writes share requests), or at once when someone waits for it
 * (fsync with --sync cloud, `blobdisk flush`, unmount). One flush of an image:
 *   page blob   take the lease; fix the size (shrink to what still belongs to the image,
 *               then grow to the new size; logical size in metadata); then, in batches
 *               of grains, Put Page for dirty sector runs (joined across grains, ≤ 4 MiB)
 *               and Clear Pages for runs of zeros
 *   block blob  take the lease; stage new blocks for every committed block a dirty grain
 *               or a size change touches (read-modify-write through the image's UploadSource), and one
 *               Put Block List that keeps the rest
 * after which each grain whose generation did not move is marked clean; a grain written
 * again meanwhile stays dirty and goes in the next flush.
 *
 * Failures:   ENOENT / EBUSY / ESTALE   the blob vanished, or someone else holds it: the
 *                                       image is in conflict, nothing is overwritten, its
 *                                       dirty data stays in the cache, status says so
 *             anything else (EIO, 5xx, resets, Azure down)
 *                                       retried with backoff from 0.5 s up to 30 s, forever;
 *                                       every failure is logged, none is dropped */

import crypto from 'node:crypto';
import { GrainCache } from '../cache/cache';
import { SECTOR, runs, sectorsOf } from '../cache/sectors';
import { BlobdiskError, isBlobdiskError } from '../errors';
import { Logger } from '../log';
import { LOGICAL_SIZE_KEY, logicalSizeText } from '../remote/remote';
import { FlushOptions, FlushProgress, UploadSource, Uploads } from '../remote/uploads';
import { BlobStore, MAX_PAGE_BLOB_BYTES } from '../store/types';
import { CommittedBlock, PageUpload, blockSizeFor, planBlocks, planPageUploads } from './plan';

const HELD_RETRY_MS = 100;
/** A writer that never pauses still gets its changes uploaded once the oldest has waited
 *  this many write-back delays (and at least MIN_MAX_AGE_MS). */
const MAX_AGE_FACTOR = 10;
const MIN_MAX_AGE_MS = 5_000;

export interface FlusherOptions {
  readonly grainSize: number;
  /** Uploads in flight per image. */
  readonly concurrency: number;
  /** How long dirty data waits before a background flush, so writes can coalesce. */
  readonly delayMs: number;
}

export type { FlushProgress };

/** Dirty grains of a page blob are read and planned this many bytes at a time. */
const WINDOW_BYTES = 8 * 1024 * 1024;
const MIN_BACKOFF_MS = 500;
const MAX_BACKOFF_MS = 30_000;
const POLL_MS = 50;

const roundUp = (n: number): number => Math.ceil(n / SECTOR) * SECTOR;
const roundDown = (n: number): number => Math.floor(n / SECTOR) * SECTOR;

/** Runs `jobs` with at most `limit` at a time; rejects with the first failure after all settled. */
async function bounded<T>(items: readonly T[], limit: number, job: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: unknown;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const item = items[next++] as T;
      try {
        await job(item);
      } catch (e) {
        failure ??= e;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failure !== undefined) throw failure;
}

export class Flusher implements Uploads {
  private readonly queued = new Set<UploadSource>();
  private readonly backoff = new Map<UploadSource, { failures: number; until: number }>();
  private timer: NodeJS.Timeout | undefined;
  private timerAt = 0;
  private running: Promise<void> | undefined;
  private urgent = false;
  private stopped = false;
  /** Window buffers of finished uploads, for the next ones. */
  private readonly spareWindows: Buffer[] = [];
  /** When each queued image was last written (ms). */
  private readonly lastWrite = new Map<UploadSource, number>();
  /** Images no upload may start for (a rename is moving their blob). */
  private readonly held = new Set<UploadSource>();
  /** The upload under way, if any. */
  private flushing: { image: UploadSource; done: Promise<void> } | undefined;

  constructor(
    private readonly store: BlobStore,
    private readonly cache: GrainCache,
    private readonly options: FlusherOptions,
    private readonly log: Logger,
  ) {}

  /** The image has something to upload. Uploads wait until it has been quiet for the
   *  write-back delay, so a burst of writes is acknowledged at local speed and goes up
   *  after; see due(). */
  notify(image: UploadSource): void {
    this.queued.add(image);
    this.lastWrite.set(image, Date.now());
    this.schedule(this.underPressure() ? 0 : this.options.delayMs);
  }

  /** Half the cache is dirty: writes would soon wait for room. */
  private underPressure(): boolean {
    return this.cache.stats.dirtyBytes * 2 >= this.cache.sizeBytes;
  }

  /** Whether the image's upload should start now: it has been quiet for the write-back
   *  delay, or its oldest change has waited MAX_AGE_FACTOR delays (a writer that never
   *  pauses), or half the cache is dirty (writes would soon wait for room), or someone
   *  waits for it (flush, fsync with --sync cloud, unmount). */
  private due(image: UploadSource, now: number): boolean {
    if (this.urgent) return true;
    const delay = this.options.delayMs;
    if (now - (this.lastWrite.get(image) ?? 0) >= delay) return true;
    const since = this.cache.dirtyOf(image.remote.id).since;
    if (since > 0 && now - since >= Math.max(MIN_MAX_AGE_MS, delay * MAX_AGE_FACTOR)) return true;
    return this.underPressure();
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    const at = Date.now() + ms;
    if (this.timer && this.timerAt <= at) return;
    if (this.timer) clearTimeout(this.timer);
    this.timerAt = at;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.run();
    }, ms);
    this.timer.unref();
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
    if ([...this.queued].every((i) => this.held.has(i))) return HELD_RETRY_MS;
    if (this.urgent) return 0;
    const now = Date.now();
    let soonest = this.options.delayMs;
    for (const image of this.queued) {
      const b = this.backoff.get(image);
      if (b) soonest = Math.min(soonest, b.until - now);
      else soonest = Math.min(soonest, (this.lastWrite.get(image) ?? 0) + this.options.delayMs - now);
    }
    return Math.max(0, soonest);
  }

  /** One pass over the images that are due; run() schedules the next one. */
  private async loop(): Promise<void> {
    const now = Date.now();
    for (const image of this.queued) if (image.remote.conflict) this.forget(image);
    const ready = [...this.queued].filter((i) => (this.backoff.get(i)?.until ?? 0) <= now && this.due(i, now));
    for (const image of ready) {
      if (this.stopped) return;
      if (this.held.has(image)) continue;
      try {
        const done = this.flushImage(image);
        this.flushing = { image, done };
        await done.finally(() => (this.flushing = undefined));
        this.backoff.delete(image);
        if (!image.remote.needsUpload()) {
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
    if (isBlobdiskError(e) && (e.code === 'ENOENT' || e.code === 'EBUSY' || e.code === 'ESTALE')) {
      image.remote.setConflict(image.remote.conflict ?? `cannot upload to ${name} (${e.code}: ${e.message}); its changes stay in the cache`);
      this.forget(image);
      return;
    }
    const b = this.backoff.get(image) ?? { failures: 0, until: 0 };
    b.failures++;
    const wait = Math.min(MAX_BACKOFF_MS, MIN_BACKOFF_MS * 2 ** (b.failures - 1));
    b.until = Date.now() + wait;
    this.backoff.set(image, b);
    const code = isBlobdiskError(e) ? e.code : 'error';
    this.log.warn(`uploading ${name} failed (${code}: ${(e as Error).message}); trying again in ${(wait / 1000).toFixed(1)} s (attempt ${b.failures})`);
  }

  /** Runs `fn` while no upload of `image` is under way or may start; uploads resume after. */
  async exclusive<T>(image: UploadSource, fn: () => Promise<T>): Promise<T> {
    if (this.held.has(image)) throw new BlobdiskError('EBUSY', `${image.remote.ref.container}/${image.remote.ref.name} is being moved`);
    this.held.add(image);
    try {
      while (this.flushing?.image === image) await this.flushing.done.catch(() => undefined);
      return await fn();
    } finally {
      this.held.delete(image);
      if (image.remote.needsUpload()) this.notify(image);
    }
  }

  /** Notes an ETag our request produced, so a later mount does not mistake it for someone else's change. */
  private ours(image: UploadSource, etag: string): string {
    return image.remote.produced(etag);
  }

  /** Uploads everything the image holds dirty now. */
  private async flushImage(image: UploadSource): Promise<void> {
    if (!image.remote.needsUpload()) return;
    await image.remote.takeLease();
    if (image.remote.kind === 'page') await this.flushPageBlob(image);
    else if (image.remote.kind === 'block') await this.flushBlockBlob(image);
    else throw new BlobdiskError('EROFS', `${image.remote.ref.name} is an append blob`);
  }

  private async flushPageBlob(image: UploadSource): Promise<void> {
    const { ref } = image.remote;
    const g = this.options.grainSize;
    let info = image.remote.info;
    const size = image.remote.size;
    const cuts = image.remote.cuts;
    const physical = roundUp(size);
    if (physical > MAX_PAGE_BLOB_BYTES) throw new BlobdiskError('EFBIG', `${ref.name} would exceed the 8 TiB page blob limit`);
    let sized = false;
    if (image.remote.remoteEnd < info.size) {
      // Cut what no longer belongs to the image before growing again, so it reads as zeros.
      info = { ...info, size: roundDown(image.remote.remoteEnd), etag: this.ours(image, await this.store.resizePageBlob(ref, roundDown(image.remote.remoteEnd), image.remote.writeConditions())) };
      sized = true;
      image.counters.uploads++;
    }
    if (info.size !== physical) {
      info = { ...info, size: physical, etag: this.ours(image, await this.store.resizePageBlob(ref, physical, image.remote.writeConditions())) };
      sized = true;
      image.counters.uploads++;
    }
    const want = logicalSizeText(size);
    if (info.metadata[LOGICAL_SIZE_KEY] !== want) {
      const metadata: Record<string, string> = { ...info.metadata };
      delete metadata[LOGICAL_SIZE_KEY];
      if (want !== undefined) metadata[LOGICAL_SIZE_KEY] = want;
      info = { ...info, metadata, etag: this.ours(image, await this.store.setMetadata(ref, metadata, image.remote.writeConditions())) };
      sized = true;
      image.counters.uploads++;
    }
    if (sized || image.remote.remoteEnd < image.remote.size) image.remote.uploaded(info, cuts);

    // Grains are read a window at a time, just ahead of the uploads, so reading the cache,
    // planning and marking grains clean overlap with requests in flight instead of
    // stalling the pipeline between batches.
    const dirty = this.cache.dirtyGrains(image.remote.id);
    const perWindow = Math.max(1, Math.floor(WINDOW_BYTES / g));
    interface Job { readonly upload: PageUpload; readonly window: Window }
    interface Window { left: number; readonly grains: { idx: number; gen: number; data: Buffer; end: number }[]; buffer?: Buffer }
    const ready: Job[] = [];
    /** Grains of finished windows being marked clean (their checksums are under way). */
    const marking: Promise<void>[] = [];
    let failure: unknown;
    let nextGrain = 0;
    let reading: Promise<void> | undefined;
    const readWindow = async (): Promise<void> => {
      const batch = dirty.slice(nextGrain, nextGrain + perWindow);
      nextGrain += batch.length;
      // Generations and bitmaps first, then the grain files read side by side.
      const snapshots = batch.flatMap((idx) => {
        const state = this.cache.state(image.remote.id, idx);
        return state?.dirty ? [{ idx, gen: state.gen, bitmap: Buffer.from(state.dirty) }] : [];
      });
      // One buffer for the window: neighbouring grains' runs join into a Put Page as a view of it.
      const buffer = this.windowBuffer(perWindow * g);
      const present = await Promise.all(snapshots.map((snap, i) => this.cache.read(image.remote.id, snap.idx, 0, g, buffer, i * g)));
      const window: Window = { left: 0, grains: [] };
      const pieces: { offset: number; data: Buffer }[] = [];
      for (const [i, { idx, gen, bitmap }] of snapshots.entries()) {
        // A grain gone meanwhile (a truncate) is looked at again by the next flush.
        if (!present[i]) continue;
        const data = buffer.subarray(i * g, (i + 1) * g);
        let whole = true;
        for (const [from, to] of runs(bitmap, sectorsOf(g))) {
          const start = idx * g + from * SECTOR;
          const end = Math.min(idx * g + to * SECTOR, physical);
          // Bytes past the size we set were written after this flush began: next time.
          if (end < idx * g + to * SECTOR) whole = false;
          if (end > start) pieces.push({ offset: start, data: data.subarray(start - idx * g, end - idx * g) });
        }
        if (whole) window.grains.push({ idx, gen, data, end: Math.min((idx + 1) * g, physical) });
      }
      const uploads = planPageUploads(pieces);
      window.left = uploads.length;
      window.buffer = buffer;
      if (uploads.length === 0) marking.push(this.windowDone(image, window));
      for (const upload of uploads) ready.push({ upload, window });
    };
    const next = async (): Promise<Job | undefined> => {
      for (;;) {
        // Keep a window read ahead of the requests in flight.
        if (ready.length <= this.options.concurrency && nextGrain < dirty.length) {
          reading ??= readWindow()
            .catch((e: unknown) => void (failure ??= e))
            .finally(() => (reading = undefined));
        }
        const job = ready.shift();
        if (job) return job;
        if (!reading) return undefined;
        await reading;
        if (failure !== undefined) return undefined;
      }
    };
    let etag = info.etag;
    let sent = 0;
    const worker = async (): Promise<void> => {
      while (failure === undefined) {
        try {
          const job = await next();
          if (!job) return;
          const { upload: u, window } = job;
          const conditions = image.remote.writeConditions();
          etag = this.ours(image, u.zero ? await this.store.clearPages(ref, u.offset, u.data.length, conditions) : await this.store.putPages(ref, u.offset, u.data, conditions));
          image.remote.pagesChanged(u.offset, u.offset + u.data.length);
          sent++;
          image.counters.uploads++;
          if (u.zero) image.counters.bytesCleared += u.data.length;
          else image.counters.bytesUp += u.data.length;
          if (--window.left === 0) marking.push(this.windowDone(image, window));
        } catch (e) {
          failure ??= e;
        }
      }
    };
    // Workers never reject: a failure stops them all, after the requests in flight.
    await Promise.all(Array.from({ length: this.options.concurrency }, worker));
    await reading;
    // Before the flush counts as done: a grain still dirty then would be uploaded again.
    await Promise.all(marking).catch((e: unknown) => void (failure ??= e));
    if (sent > 0) {
      try {
        // Concurrent calls finish in any order: ask which ETag the blob ended with.
        info = sent === 1 && failure === undefined ? { ...info, etag } : await this.store.getInfo(ref);
        image.remote.uploaded(info);
      } catch (e) {
        failure ??= e;
      }
    }
    if (failure !== undefined) throw failure;
  }

  /** Every upload of a window went through: marks its grains clean that went up whole
   *  (unless written again since their snapshot) and, once their checksums are taken,
   *  keeps its buffer for the next one. */
  private async windowDone(image: UploadSource, window: { grains: readonly { idx: number; gen: number; data: Buffer; end: number }[]; buffer?: Buffer }): Promise<void> {
    const clean = window.grains.filter((grain) => this.mayBeClean(image, grain.end));
    await Promise.all(clean.map((grain) => this.cache.markUploaded(image.remote.id, grain.idx, grain.gen, grain.data)));
    if (window.buffer && this.spareWindows.length < this.options.concurrency + 2) this.spareWindows.push(window.buffer);
  }

  /** A window buffer of `bytes`, reused: fresh ones of 8 MiB per window kept the garbage
   *  collector busy for a tenth of a drain. Shared memory, so that the cache checksums
   *  uploaded grains in its worker thread without a copy. */
  private windowBuffer(bytes: number): Buffer {
    const spare = this.spareWindows.pop();
    return spare && spare.length === bytes ? spare : Buffer.from(new SharedArrayBuffer(bytes));
  }

  private async flushBlockBlob(image: UploadSource): Promise<void> {
    const { ref } = image.remote;
    const g = this.options.grainSize;
    const info = image.remote.info;
    const size = image.remote.size;
    const cuts = image.remote.cuts;
    const grains = this.cache.dirtyGrains(image.remote.id).map((idx) => ({ idx, gen: this.cache.state(image.remote.id, idx)?.gen ?? -1 }));
    // Changed bytes by dirty sector runs, so a small write does not restage a neighbouring block.
    const changed: { start: number; end: number }[] = [];
    for (const { idx } of grains) {
      const dirty = this.cache.state(image.remote.id, idx)?.dirty;
      for (const [from, to] of dirty ? runs(dirty, sectorsOf(g)) : [[0, sectorsOf(g)] as [number, number]]) {
        changed.push({ start: idx * g + from * SECTOR, end: idx * g + to * SECTOR });
      }
    }
    const intact = Math.min(image.remote.remoteEnd, info.size);
    if (size > intact) changed.push({ start: intact, end: size });
    changed.sort((a, b) => a.start - b.start);

    const listed = info.size > 0 ? await this.store.blockList(ref) : [];
    const committed: CommittedBlock[] = [];
    let at = 0;
    for (const block of listed) {
      committed.push({ id: block.id, start: at, end: at + block.size });
      at += block.size;
    }
    if (committed.length === 0 && info.size > 0) committed.push({ id: undefined, start: 0, end: info.size });
    const firstId = listed[0]?.id;
    let idBytes = firstId !== undefined ? Buffer.from(firstId, 'base64').length : 32;
    const plan = planBlocks(idBytes < 8 ? committed.map((c) => ({ ...c, id: undefined })) : committed, changed, size, blockSizeFor(size, g));
    if (idBytes < 8) idBytes = 32; // every block is staged anew: our ids may have our length
    const ids: string[] = [];
    const stages: { id: string; start: number; end: number }[] = [];
    for (const p of plan) {
      if ('keep' in p) ids.push(p.keep);
      else {
        const id = crypto.randomBytes(idBytes).toString('base64');
        ids.push(id);
        stages.push({ id, ...p.stage });
      }
    }
    await bounded(stages, this.options.concurrency, async (s) => {
      const data = await image.readForUpload(s.start, s.end - s.start);
      if (data.length !== s.end - s.start) throw new BlobdiskError('EIO', `${ref.name} shrank while its blocks were staged; trying again`);
      await this.store.stageBlock(ref, s.id, data, image.remote.writeConditions());
      image.counters.uploads++;
      image.counters.bytesUp += data.length;
    });
    const etag = this.ours(image, await this.store.commitBlockList(ref, ids, { ...image.remote.writeConditions(), metadata: { ...info.metadata } }));
    image.counters.uploads++;
    // Recorded before any grain is clean: a clean grain may be evicted, and is then read
    // from Azure only if the image's end in Azure covers it.
    image.remote.uploaded({ ...info, size, etag }, cuts);
    for (const { idx, gen } of grains) {
      // A grain reaching past the size this flush committed was written after it began.
      if ((idx + 1) * g > size && this.dirtyPast(image, idx, size)) continue;
      if (!this.mayBeClean(image, Math.min((idx + 1) * g, size))) continue;
      if (this.cache.state(image.remote.id, idx)?.gen === gen) await this.cache.markUploaded(image.remote.id, idx, gen, await this.cache.readWhole(image.remote.id, idx));
    }
  }

  /** Resolves once everything dirty in `images` now is in Azure. `onProgress` sees the
   *  dirty bytes left. With `stallMs`, gives up (EIO) when nothing got uploaded for that
   *  long; a conflict fails at once. */
  async flush(images: readonly UploadSource[], options: FlushOptions = {}): Promise<void> {
    const targets = images.filter((i) => i.remote.needsUpload() || this.queued.has(i));
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
      for (const [idx, gen] of gens.get(image) ?? []) {
        const state = this.cache.state(image.remote.id, idx);
        // Written again since the call is fine, once the bytes of the call went up.
        if (state?.dirty && state.uploadedGen < gen) return false;
      }
      return true;
    };
    let lastProgress = Date.now();
    let lastLeft = startBytes;
    this.urgent = true;
    try {
      for (;;) {
        const conflicted = targets.find((i) => i.remote.conflict);
        if (conflicted) throw new BlobdiskError('EIO', conflicted.remote.conflict ?? 'conflict');
        if (targets.every(isDone)) {
          options.onProgress?.({ dirtyBytes: left(), startBytes });
          return;
        }
        for (const image of targets) this.backoff.delete(image);
        if (!this.running) void this.run();
        await new Promise((r) => setTimeout(r, POLL_MS));
        const now = left();
        options.onProgress?.({ dirtyBytes: now, startBytes });
        if (now < lastLeft) lastProgress = Date.now();
        lastLeft = now;
        if (options.stallMs !== undefined && Date.now() - lastProgress > options.stallMs) {
          throw new BlobdiskError('EIO', `nothing could be uploaded for ${Math.round(options.stallMs / 1000)} s; ${now} bytes stay dirty`);
        }
      }
    } finally {
      this.urgent = false;
    }
  }

  /** Whether an uploaded grain ending at byte `end` may be marked clean: not while a
   *  truncate since has cut Azure's part of the image below that end. The next flush cuts
   *  the blob there first (a page blob) or restages from there (a block blob); a grain
   *  marked clean and evicted before then would read as zeros, and the cut would take
   *  its uploaded bytes. Kept dirty, it goes up again after the cut. */
  private mayBeClean(image: UploadSource, end: number): boolean {
    return end <= image.remote.remoteEnd;
  }

  /** Whether grain `idx` has dirty sectors at or past byte `size` of the image. */
  private dirtyPast(image: UploadSource, idx: number, size: number): boolean {
    const dirty = this.cache.state(image.remote.id, idx)?.dirty;
    if (!dirty) return false;
    const g = this.options.grainSize;
    const firstPast = Math.max(0, Math.ceil((size - idx * g) / SECTOR));
    return runs(dirty, sectorsOf(g)).some(([, to]) => to > firstPast);
  }

  /** Dirty bytes and the oldest dirty age of an image, for status. */
  dirtyOf(image: UploadSource): { bytes: number; since: number } {
    return this.cache.dirtyOf(image.remote.id);
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }
}
