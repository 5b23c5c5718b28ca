/* Uploading a page blob: fix the size first (shrink to what still belongs to the image,
 * then grow to the new size; logical size in metadata), then, in windows of dirty grains
 * read just ahead of the requests, Put Page for dirty sector runs (joined across grains,
 * at most 4 MiB) and Clear Pages for runs of zeros, `concurrency` at a time, from at most
 * MAX_WINDOWS windows at once. A window's grains are marked clean once all its requests
 * went through, unless written again. */

import { SECTOR, runs, sectorsOf } from '../cache/sectors';
import { BlobdiskError } from '../errors';
import { LOGICAL_SIZE_KEY, logicalSizeText } from '../remote/remote';
import { UploadSource } from '../remote/uploads';
import { MAX_PAGE_BLOB_BYTES } from '../store/types';
import { BufferPool } from '../image/pool';
import { PageUpload, planPageUploads } from './plan';
import { UploaderDeps, mayBeClean, roundDown, roundUp } from './upload';

/** Windows read and not yet done (their requests in flight or their grains being marked
 *  clean), and so window buffers in all: 4 of 4 MiB. A sequential writer's window is one
 *  4 MiB Put Page, so this also bounds its bytes in flight to 16 MiB, which is more than a
 *  page blob's throughput needs (60 MiB/s on standard storage); scattered writes make many
 *  small requests per window and keep every worker busy. */
const MAX_WINDOWS = 4;

export class PageUploader {
  /** Window buffers of finished uploads, for the next ones (let go when uploads pause). */
  private spareWindows: BufferPool | undefined;

  constructor(private readonly deps: UploaderDeps) {}

  /** Uploads everything the page blob `image` holds dirty now (see the file's comment);
   *  with `only`, just the dirty grains it allows (an open checkpoint's). */
  async upload(image: UploadSource, only?: (idx: number) => boolean): Promise<void> {
    const { ref } = image.remote;
    const g = this.deps.grainSize;
    let info = image.remote.info;
    const size = image.remote.size;
    const cuts = image.remote.cuts;
    const physical = roundUp(size);
    if (physical > MAX_PAGE_BLOB_BYTES) throw new BlobdiskError('too-large', `${ref.name} would exceed the 8 TiB page blob limit`);
    let sized = false;
    if (image.remote.remoteEnd < info.size) {
      // Cut what no longer belongs to the image before growing again, so it reads as zeros.
      info = { ...info, size: roundDown(image.remote.remoteEnd), etag: image.remote.produced(await this.deps.store.resizePageBlob(ref, roundDown(image.remote.remoteEnd), image.remote.writeConditions())) };
      sized = true;
      image.counters.uploads++;
    }
    if (info.size !== physical) {
      info = { ...info, size: physical, etag: image.remote.produced(await this.deps.store.resizePageBlob(ref, physical, image.remote.writeConditions())) };
      sized = true;
      image.counters.uploads++;
    }
    const want = logicalSizeText(size);
    if (info.metadata[LOGICAL_SIZE_KEY] !== want) {
      const metadata: Record<string, string> = { ...info.metadata };
      delete metadata[LOGICAL_SIZE_KEY];
      if (want !== undefined) metadata[LOGICAL_SIZE_KEY] = want;
      info = { ...info, metadata, etag: image.remote.produced(await this.deps.store.setMetadata(ref, metadata, image.remote.writeConditions())) };
      sized = true;
      image.counters.uploads++;
    }
    if (sized || image.remote.remoteEnd < image.remote.size) image.remote.uploaded(info, cuts);

    // Grains are read a window at a time, just ahead of the uploads, so reading the cache,
    // planning and marking grains clean overlap with requests in flight instead of
    // stalling the pipeline between batches.
    const all = this.deps.cache.dirtyGrains(image.remote.id);
    const dirty = only ? all.filter(only) : all;
    const perWindow = Math.max(1, Math.floor(this.deps.windowBytes / g));
    interface Job { readonly upload: PageUpload; readonly window: Window }
    interface Window { left: number; readonly grains: { idx: number; gen: number; data: Buffer; end: number }[]; buffer?: Buffer }
    const ready: Job[] = [];
    /** Grains of finished windows being marked clean (their checksums are under way). */
    const marking: Promise<void>[] = [];
    let failure: unknown;
    let nextGrain = 0;
    let reading: Promise<void> | undefined;
    /** Windows read and not yet done, and the workers waiting for one to be done. */
    let alive = 0;
    let waiting: (() => void)[] = [];
    const wake = (): void => {
      const waiters = waiting;
      waiting = [];
      for (const w of waiters) w();
    };
    const finished = (window: Window): void => {
      marking.push(
        this.windowDone(image, window).finally(() => {
          alive--;
          wake();
        }),
      );
    };
    const readWindow = async (): Promise<void> => {
      const batch = dirty.slice(nextGrain, nextGrain + perWindow);
      nextGrain += batch.length;
      // Generations and bitmaps first, then the grain files read side by side.
      const snapshots = batch.flatMap((idx) => {
        const state = this.deps.cache.state(image.remote.id, idx);
        return state?.dirty && (!only || only(idx)) ? [{ idx, gen: state.gen, bitmap: Buffer.from(state.dirty) }] : [];
      });
      // One buffer for the window: neighbouring grains' runs join into a Put Page as a view of it.
      const buffer = this.windowBuffer(perWindow * g);
      alive++;
      const present = await Promise.all(snapshots.map((snap, i) => this.deps.cache.read(image.remote.id, snap.idx, 0, g, buffer, i * g)));
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
      if (uploads.length === 0) finished(window);
      for (const upload of uploads) ready.push({ upload, window });
    };
    const next = async (): Promise<Job | undefined> => {
      for (;;) {
        // Keep a window read ahead of the requests in flight, and no more: each holds up to
        // windowBytes, and a sequential writer's windows are two 4 MiB requests each.
        if (ready.length <= 1 && nextGrain < dirty.length && alive < MAX_WINDOWS) {
          reading ??= readWindow()
            .catch((e: unknown) => {
              failure ??= e;
              wake();
            })
            .finally(() => (reading = undefined));
        }
        const job = ready.shift();
        if (job) return job;
        if (reading) await reading;
        else if (nextGrain < dirty.length && alive >= MAX_WINDOWS) await new Promise<void>((resolve) => waiting.push(resolve));
        else return undefined;
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
          etag = image.remote.produced(u.zero ? await this.deps.store.clearPages(ref, u.offset, u.data.length, conditions) : await this.deps.store.putPages(ref, u.offset, u.data, conditions));
          image.remote.pagesChanged(u.offset, u.offset + u.data.length);
          sent++;
          image.counters.uploads++;
          if (u.zero) image.counters.bytesCleared += u.data.length;
          else image.counters.bytesUp += u.data.length;
          if (--window.left === 0) finished(window);
        } catch (e) {
          // Its window never finishes: the workers waiting for one stop now.
          failure ??= e;
          wake();
        }
      }
    };
    // Workers never reject: a failure stops them all, after the requests in flight.
    await Promise.all(Array.from({ length: this.deps.concurrency }, worker));
    await reading;
    // Before the flush counts as done: a grain still dirty then would be uploaded again.
    await Promise.all(marking).catch((e: unknown) => void (failure ??= e));
    if (sent > 0) {
      try {
        // Concurrent calls finish in any order: ask which ETag the blob ended with.
        info = sent === 1 && failure === undefined ? { ...info, etag } : await this.deps.store.getInfo(ref);
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
    const clean = window.grains.filter((grain) => mayBeClean(image, grain.end));
    await Promise.all(clean.map((grain) => this.deps.cache.markUploaded(image.remote.id, grain.idx, grain.gen, grain.data)));
    if (window.buffer) this.spareWindows?.give(window.buffer);
  }

  /** A window buffer of `bytes`, reused: fresh ones of 8 MiB per window kept the garbage
   *  collector busy for a tenth of a drain. Shared memory, so that the cache checksums
   *  uploaded grains in its worker thread without a copy. */
  private windowBuffer(bytes: number): Buffer {
    if (this.spareWindows?.size !== bytes) this.spareWindows = new BufferPool(bytes, MAX_WINDOWS);
    return this.spareWindows.take();
  }
}
