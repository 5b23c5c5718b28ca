/* Boot-time prefetch. An image remembers which grains were read in the first minute after
 * its first read in a mount (for a VM disk: its boot), in a small file in the cache
 * directory. When a later mount first reads the image while the cache holds nothing of it
 * (evicted, dropped because the blob changed, a cache directory given the file), those
 * grains are warmed in the background with warm.ts, in the order they were first read,
 * behind the guest's own reads. The file is rewritten by every such minute. */

import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Clock, Timer } from '../clock';
import { errorMessage } from '../errors';
import type { BlobRef } from '../store/types';
import type { Image } from './image';
import { Warmer, regrain, type WarmDeps, type WarmProgress } from './warm';

/** How long after the first read reads are remembered, and how many grains at most. */
export const BOOT_WINDOW_MS = 60_000;
export const BOOT_GRAINS_MAX = 4096;

/** The file remembering `ref`'s first minute, in `dir`. */
export function bootFile(dir: string, account: string, ref: BlobRef): string {
  return path.join(dir, `${crypto.createHash('sha256').update(`${account}/${ref.container}/${ref.name}`).digest('hex').slice(0, 32)}.json`);
}

/** Grain indices (of `grainSize`) from a boot file's text; [] when it is not one. */
export function parseBootGrains(text: string, grainSize: number): number[] {
  try {
    const v = JSON.parse(text) as { grains?: unknown; grainSize?: unknown };
    if (!Array.isArray(v.grains) || typeof v.grainSize !== 'number' || !(v.grainSize > 0)) return [];
    const grains = v.grains.filter((i): i is number => Number.isSafeInteger(i) && i >= 0).slice(0, BOOT_GRAINS_MAX);
    return v.grainSize === grainSize ? grains : regrain(grains, v.grainSize, grainSize);
  } catch {
    return [];
  }
}

export interface BootDeps extends WarmDeps {
  readonly clock: Clock;
  /** The file of this image (bootFile). */
  readonly file: string;
}

export class BootTrace {
  private started = false;
  private recording = false;
  private readonly seen = new Set<number>();
  private timer: Timer | undefined;
  private warmer: Warmer | undefined;
  private saving: Promise<void> | undefined;

  constructor(
    private readonly deps: BootDeps,
    private readonly image: Image,
  ) {}

  /** The warm-up from the last boot file, while or after it runs. */
  get progress(): WarmProgress | undefined {
    return this.warmer?.progress;
  }

  /** A read of [offset, offset + length): the first starts the minute and the warm-up. */
  note(offset: number, length: number): void {
    if (!this.started) this.start();
    if (!this.recording || length <= 0) return;
    const g = this.deps.grainSize;
    for (let idx = Math.floor(offset / g); idx * g < offset + length && this.seen.size < BOOT_GRAINS_MAX; idx++) this.seen.add(idx);
  }

  private start(): void {
    this.started = true;
    this.recording = true;
    this.timer = this.deps.clock.timeout(() => void this.save(), BOOT_WINDOW_MS);
    // Only a cold start is warmed: a cache that holds some of the image serves its boot already.
    const cold = this.image.cachedBytes() === 0;
    void fs.readFile(this.deps.file, 'utf8').then(
      (text) => {
        const grains = parseBootGrains(text, this.deps.grainSize);
        if (grains.length > 0 && this.recording && cold) this.warmer = new Warmer(this.deps, this.image, grains);
      },
      () => undefined, // no file yet: the first boot of this image here
    );
  }

  /** Ends the minute and writes what it read (atomically: a rename). */
  save(): Promise<void> {
    if (!this.recording) return this.saving ?? Promise.resolve();
    this.recording = false;
    this.timer?.cancel();
    if (this.seen.size === 0) return Promise.resolve();
    const tmp = `${this.deps.file}.${process.pid}.tmp`;
    const text = `${JSON.stringify({ blob: `${this.image.ref.container}/${this.image.ref.name}`, grainSize: this.deps.grainSize, grains: [...this.seen] })}\n`;
    this.saving = (async () => {
      try {
        await fs.mkdir(path.dirname(this.deps.file), { recursive: true, mode: 0o700 });
        await fs.writeFile(tmp, text, { mode: 0o600 });
        await fs.rename(tmp, this.deps.file);
      } catch (e) {
        this.deps.log.warn(`could not remember the first reads of ${this.image.ref.name} for the next boot: ${errorMessage(e)}`);
      }
    })();
    return this.saving;
  }

  /** Stops the warm-up and saves a minute cut short (the mount is going away). */
  async close(): Promise<void> {
    this.warmer?.stop('unmounting');
    await this.save();
    await this.warmer?.ended;
  }
}
