/* Moving an image to another host (`blobdisk handoff`, `mount --warm-from`). The source
 * drains the image, lets go of its lease and describes it in a handoff file: the blob,
 * its ETag after the drain, sizes, and its hot grains (the cached ones, most recently
 * used first). The destination takes the lease only while the blob still has that ETag
 * (If-Match on Acquire Lease, one request): a blob written after the handoff is stale,
 * and nothing of the file is trusted. Then it warms its cache from the hot list in the
 * background (lib/image/warm.ts). */

import fs from 'node:fs/promises';
import type { GrainCache } from '../cache/cache';
import type { Clock } from '../clock';
import { BlobdiskError, isBlobdiskError } from '../errors';
import type { FetchBudget } from '../image/context';
import type { Image } from '../image/image';
import type { Images } from '../image/registry';
import { Warmer, regrain, type WarmProgress } from '../image/warm';
import type { Logger } from '../log';
import { logicalSize } from '../remote/remote';
import type { BlobRef, BlobStore } from '../store/types';
import type { FlushImage } from './backups';
import type { Namespace } from './namespace';

export type { WarmProgress };

/** Grains a handoff file lists at most. */
export const HOT_GRAINS_MAX = 4096;
export const HANDOFF_VERSION = 1;

/** What `blobdisk handoff` writes (JSON). */
export interface HandoffFile {
  readonly blobdiskHandoff: number;
  readonly container: string;
  readonly blob: string;
  /** The blob's ETag after the drain: the destination takes the lease only on it. */
  readonly etag: string;
  readonly size: number;
  readonly logicalSize: number;
  readonly grainSize: number;
  /** Grain indices (of grainSize), most recently used first. */
  readonly hot: number[];
  /** When and from where (UTC, host name and mountpoint are the mount's). */
  readonly at: string;
}

/** Checks a parsed handoff file; `where` names it in the error. */
export function parseHandoff(text: string, where: string): HandoffFile {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new BlobdiskError('invalid', `${where} is not JSON; give the file blobdisk handoff wrote`);
  }
  const o = v as Partial<Record<keyof HandoffFile, unknown>>;
  const ok =
    typeof v === 'object' && v !== null && o.blobdiskHandoff === HANDOFF_VERSION &&
    typeof o.container === 'string' && typeof o.blob === 'string' && typeof o.etag === 'string' &&
    typeof o.size === 'number' && typeof o.grainSize === 'number' && o.grainSize > 0 &&
    Array.isArray(o.hot) && o.hot.every((i) => Number.isSafeInteger(i) && (i as number) >= 0);
  if (!ok) throw new BlobdiskError('invalid', `${where} is not a handoff file of this blobdisk version; make a new one with blobdisk handoff`);
  return v as HandoffFile;
}

export interface HandoffDeps {
  readonly ns: Namespace;
  readonly store: BlobStore;
  readonly images: Images;
  readonly cache: GrainCache;
  readonly budget: FetchBudget;
  readonly flush: FlushImage;
  readonly log: Logger;
  readonly clock: Clock;
  readonly grainSize: number;
  readonly readOnly: boolean;
  /** The mount's --container: a handoff of another container cannot be served here. */
  readonly container: string | undefined;
}

/** Answers a control request of `blobdisk handoff`; undefined for any other op. */
export function handoffRequest(handoffs: Handoffs, request: { readonly op: string; readonly [key: string]: unknown }, progress: (p: unknown) => void, defaultStallMs: number): Promise<HandoffFile> | undefined {
  if (request.op !== 'handoff') return undefined;
  if (typeof request.path !== 'string' || request.path === '') return Promise.reject(new BlobdiskError('invalid', 'the handoff request lacks path'));
  return handoffs.handoff(request.path, typeof request.timeoutMs === 'number' && request.timeoutMs > 0 ? request.timeoutMs : defaultStallMs, progress);
}

export class Handoffs {
  private readonly warmers = new Map<Image, Warmer>();

  constructor(private readonly deps: HandoffDeps) {}

  /** Drains the image at `path`, releases its lease and describes it for the next host. */
  async handoff(path: string, stallMs: number, progress: (p: unknown) => void): Promise<HandoffFile> {
    const { store, cache, flush } = this.deps;
    const image = await this.deps.ns.imageAt(path);
    if (image.conflict !== undefined) throw new BlobdiskError('conflict', `${image.conflict}; resolve it before handing ${path} off`);
    this.warmers.get(image)?.stop('handed off');
    // Twice: writes that landed during the first drain go up too.
    await flush(image, stallMs, progress);
    if (image.needsUpload()) await flush(image, stallMs, progress);
    if (image.needsUpload()) throw new BlobdiskError('busy', `${path} is still being written; stop what writes it (the VM) and hand it off again`);
    await image.remote.releaseLease();
    const info = await store.getInfo(image.ref);
    if (info.leased === true) throw new BlobdiskError('busy', `${path} is leased by another writer; only its holder can hand it off`);
    const hot = cache.hotGrains(image.id, HOT_GRAINS_MAX);
    this.deps.log.info(`handed off ${image.ref.container}/${image.ref.name} (ETag ${info.etag}, ${hot.length} hot grains); its lease is free`);
    return {
      blobdiskHandoff: HANDOFF_VERSION, container: image.ref.container, blob: image.ref.name, etag: info.etag,
      size: info.size, logicalSize: logicalSize(info), grainSize: this.deps.grainSize, hot,
      at: new Date(this.deps.clock.now()).toISOString(),
    };
  }

  /** Takes the image of handoff file `file` (if its ETag still holds) and warms it in the
   *  background. Never throws: a mount goes on without it, and the log says why. */
  async warmFrom(file: string): Promise<void> {
    const { log } = this.deps;
    try {
      const h = parseHandoff(await fs.readFile(file, 'utf8'), file);
      if (this.deps.container !== undefined && this.deps.container !== h.container) {
        throw new BlobdiskError('invalid', `it names container ${h.container}, this mount serves ${this.deps.container} only`);
      }
      const ref: BlobRef = { container: h.container, name: h.blob };
      const info = await this.deps.store.getInfo(ref);
      const image = await this.deps.images.get(ref, info, true);
      const stale = `handoff ${file} is stale: ${h.container}/${h.blob} changed after the handoff (ETag ${h.etag}, now another); its lease was not taken and nothing is prefetched`;
      if (this.deps.readOnly) {
        if (info.etag !== h.etag) return log.warn(stale);
      } else {
        try {
          await image.remote.takeLease(h.etag);
        } catch (e) {
          if (isBlobdiskError(e) && e.kind === 'stale') return log.warn(stale);
          throw e;
        }
      }
      const grains = regrain(h.hot, h.grainSize, this.deps.grainSize);
      log.info(`took over ${h.container}/${h.blob} from handoff ${file}; warming ${grains.length} grains in the background`);
      const warmer = new Warmer({ cache: this.deps.cache, budget: this.deps.budget, clock: this.deps.clock, log, grainSize: this.deps.grainSize }, image, grains);
      this.warmers.set(image, warmer);
    } catch (e) {
      log.warn(`--warm-from ${file}: ${isBlobdiskError(e) ? `${e.kind}: ` : ''}${(e as Error).message}; nothing is prefetched from it`);
    }
  }

  /** How far the warm-up of `image` got, if it has one. */
  progressOf(image: Image): WarmProgress | undefined {
    return this.warmers.get(image)?.progress;
  }

  /** Stops every warm-up and waits for fetches under way. */
  async close(): Promise<void> {
    for (const w of this.warmers.values()) w.stop('unmounting');
    await Promise.all([...this.warmers.values()].map((w) => w.ended));
  }
}
