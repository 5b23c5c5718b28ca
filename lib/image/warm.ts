/* Warming an image's cache in the background from a list of grains (a handoff's hot list):
 * a few fetches at a time, each one only while the mount's fetch budget has room, so a
 * warm-up never queues in front of a reader; a reader of a grain being warmed shares its
 * fetch. It stops when the cache has no room left without evicting, when the image
 * changes, or when stop() is called. */

import type { Clock } from '../clock';
import type { GrainCache } from '../cache/cache';
import { isBlobdiskError } from '../errors';
import type { Logger } from '../log';
import type { FetchBudget } from './context';
import type { Image } from './image';

/** Grains warmed at once. */
export const WARM_CONCURRENCY = 4;
/** How long a warm-up waits before looking again at a busy fetch budget. */
const BUDGET_WAIT_MS = 20;

/** The grains of `grainSize` holding the bytes of grains `list` of `listGrainSize`, in
 *  order, once each (a list made with another --grain-size). */
export function regrain(list: readonly number[], listGrainSize: number, grainSize: number): number[] {
  const out = new Set<number>();
  for (const i of list) {
    const first = Math.floor((i * listGrainSize) / grainSize);
    const last = Math.floor(((i + 1) * listGrainSize - 1) / grainSize);
    for (let g = first; g <= last; g++) out.add(g);
  }
  return [...out];
}

export interface WarmProgress {
  /** Grains looked at (fetched, or found cached or empty), of `total`. */
  readonly done: number;
  readonly total: number;
  /** Grains actually fetched. */
  readonly fetched: number;
  readonly state: 'running' | 'done' | 'stopped';
  /** Why it stopped early. */
  readonly reason?: string;
}

export interface WarmDeps {
  readonly cache: GrainCache;
  readonly budget: FetchBudget;
  readonly clock: Clock;
  readonly log: Logger;
  readonly grainSize: number;
}

export class Warmer {
  private next = 0;
  private doneCount = 0;
  private fetchedCount = 0;
  private stopped: string | undefined;
  private finished = false;
  /** Settles when the warm-up is over. */
  readonly ended: Promise<void>;

  constructor(
    private readonly deps: WarmDeps,
    private readonly image: Image,
    private readonly grains: readonly number[],
    concurrency = WARM_CONCURRENCY,
  ) {
    const workers = Array.from({ length: Math.min(concurrency, grains.length) }, () => this.work());
    this.ended = Promise.all(workers).then(() => {
      this.finished = true;
      const what = `${image.ref.container}/${image.ref.name}`;
      if (this.stopped !== undefined) deps.log.info(`warming ${what} stopped after ${this.doneCount} of ${grains.length} grains: ${this.stopped}`);
      else deps.log.info(`warmed ${what}: ${this.fetchedCount} grains fetched, ${grains.length - this.fetchedCount} already cached or empty`);
    });
  }

  get progress(): WarmProgress {
    const state = !this.finished ? 'running' : this.stopped !== undefined ? 'stopped' : 'done';
    return { done: this.doneCount, total: this.grains.length, fetched: this.fetchedCount, state, ...(this.stopped !== undefined ? { reason: this.stopped } : {}) };
  }

  /** Stops starting new fetches (those under way finish). */
  stop(reason: string): void {
    this.stopped ??= reason;
  }

  private async work(): Promise<void> {
    const { cache, budget, clock, grainSize } = this.deps;
    while (this.stopped === undefined && this.next < this.grains.length) {
      // Readers first: their fetches do not wait for the budget, a warm-up does.
      if (!budget.available) {
        await clock.sleep(BUDGET_WAIT_MS);
        continue;
      }
      if (cache.stats.usedBytes + grainSize > cache.sizeBytes) {
        this.stop('the cache is full');
        break;
      }
      const idx = this.grains[this.next++];
      if (idx === undefined) break;
      if (idx * grainSize >= this.image.size) {
        this.doneCount++;
        continue;
      }
      try {
        if (await this.image.warm(idx)) this.fetchedCount++;
      } catch (e) {
        this.stop(`${isBlobdiskError(e) ? e.kind : 'error'}: ${(e as Error).message}`);
      }
      this.doneCount++;
    }
  }
}
