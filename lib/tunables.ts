/* The numbers blobdisk's layers run by that are not user options: intervals, bounds and
 * batch sizes. Each layer takes them, with the clock, through its constructor (Timing),
 * so a test can shorten a wait or move time instead of sleeping. Defaults are pinned by
 * test/unit/tunables.test.ts. */

import { Clock, systemClock } from './clock';

export interface Tunables {
  /** Leases last this long (15 to 60 s) and are renewed at a third of it. */
  readonly leaseSeconds: number;
  /** The flusher: how often a waiting flush() looks at its progress. */
  readonly flushPollMs: number;
  /** The flusher: how soon it looks again at an image a rename holds. */
  readonly heldRetryMs: number;
  /** The flusher: a writer that never pauses gets its changes uploaded once the oldest has
   *  waited this many write-back delays, and at least minMaxAgeMs. */
  readonly maxAgeFactor: number;
  readonly minMaxAgeMs: number;
  /** The flusher: retry backoff, doubling from the first to the last. */
  readonly minBackoffMs: number;
  readonly maxBackoffMs: number;
  /** Page uploads read and plan dirty grains this many bytes at a time: a Put Page's
   *  largest, so the requests in flight hold about concurrency windows. */
  readonly uploadWindowBytes: number;
  /** The cache: how often a write waiting for room looks again. */
  readonly roomPollMs: number;
  /** The cache: access times go to the grain map this often. */
  readonly touchFlushMs: number;
  /** The cache: open grain files kept, and files opened for readNow() and writeNow() (and
   *  published to the FUSE binding's fast path, see lib/cache/native.ts). */
  readonly maxOpenFiles: number;
  readonly maxReadFiles: number;
  /** The grain map: logged changes are folded into SQLite this often, or after this many. */
  readonly foldMs: number;
  readonly foldRecords: number;
  /** Reads: how far a read may start from where the last one ended and still be sequential. */
  readonly sequentialSlackBytes: number;
  /** Page ranges are listed in windows of this many grains. */
  readonly pageWindowGrains: number;
  /** What the mount already knows (a listing past its time, an open image, st_blocks) is
   *  answered after at most this long when Azure is slow to answer again; the request goes
   *  on and updates it. Cached data never waits on Azure for longer. */
  readonly staleAnswerMs: number;
  /** After a grain's fetch failed because Azure did not answer (it waited at least
   *  silentAfterMs), that grain fails again at once for failFastMs: the kernel reads a page
   *  again right away when its read-ahead failed, and that second read would otherwise wait
   *  --io-timeout once more. A failure that came quickly (a reset, a cut body) is retried. */
  readonly failFastMs: number;
  readonly silentAfterMs: number;
}

export const DEFAULT_TUNABLES: Tunables = Object.freeze({
  leaseSeconds: 60,
  flushPollMs: 50,
  heldRetryMs: 100,
  maxAgeFactor: 10,
  minMaxAgeMs: 5_000,
  minBackoffMs: 500,
  maxBackoffMs: 30_000,
  uploadWindowBytes: 4 * 1024 * 1024,
  roomPollMs: 50,
  touchFlushMs: 5_000,
  maxOpenFiles: 128,
  maxReadFiles: 1024,
  foldMs: 1_000,
  foldRecords: 4_096,
  sequentialSlackBytes: 1024 * 1024,
  pageWindowGrains: 256,
  staleAnswerMs: 1_000,
  failFastMs: 1_000,
  silentAfterMs: 5_000,
});

/** The clock and the tunables, as layers take them. */
export interface Timing {
  readonly clock: Clock;
  readonly tunables: Tunables;
}

export const SYSTEM_TIMING: Timing = Object.freeze({ clock: systemClock, tunables: DEFAULT_TUNABLES });
