/* Fetching grains: one ranged GET for a run of grains (single flight: a grain has at most
 * one fetch, in `pending`, that every reader of it shares). A reader is released as soon
 * as its bytes arrived; each grain goes into the cache as soon as its last byte did (while
 * the GET streams on), under the grain lock, unless the epoch moved meanwhile, and its
 * buffer goes back to the pool (pool.ts). When the store offers it (the Azure store does),
 * the body is pulled straight into the grains' buffers, with readers released as the
 * bytes land; otherwise its chunks are copied in. GETs in flight are bounded per mount by
 * the FetchBudget. */

import { BlobdiskError, isBlobdiskError } from '../errors';
import { ImageContext } from './context';
import { PendingGrain } from './pending';
import { BufferPool } from './pool';

export class Fetcher {
  /** The fetch under way per grain. */
  readonly pending = new Map<number, PendingGrain>();
  /** Fetches under way, so that closing waits until their grains are in the cache. */
  private readonly fetching = new Set<Promise<void>>();
  /** Grains whose fetch just failed because Azure did not answer: fetched again only after
   *  `until` (the kernel reads a page again at once when its read-ahead failed). */
  private readonly unreachable = new Map<number, { readonly error: BlobdiskError; readonly until: number }>();

  constructor(private readonly ctx: ImageContext) {}

  /** Grain buffers of fetches, the mount's (see pool.ts). */
  private get buffers(): BufferPool {
    return this.ctx.deps.budget.buffers;
  }

  /** Starts one ranged GET for grains [first, first + count) and returns the first's pending state. */
  start(first: number, count: number, readAhead: boolean): PendingGrain {
    const g = this.ctx.deps.grainSize;
    let start = first * g;
    let end = Math.min(this.ctx.remote.remoteEnd, (first + count) * g);
    if (this.ctx.remote.kind === 'page') {
      // Fetch from the first to the last allocated byte; the rest of the run is zeros.
      const ranges = this.ctx.remote.pages.known(start, end);
      const firstRange = ranges?.[0];
      const lastRange = ranges?.[ranges.length - 1];
      if (firstRange && lastRange) {
        start = firstRange.start;
        end = lastRange.end;
      }
    }
    const grains: PendingGrain[] = [];
    for (let idx = first; idx < first + count; idx++) {
      const base = idx * g;
      const from = Math.min(g, Math.max(0, start - base));
      const to = Math.max(from, Math.min(g, end - base));
      const p = new PendingGrain(idx, () => this.buffers.take(), from, to);
      this.pending.set(idx, p);
      grains.push(p);
    }
    this.ctx.counters.fetches++;
    if (readAhead) this.ctx.counters.readAheadFetches++;
    this.ctx.deps.budget.inFlight++;
    const fetching = this.run(grains, start, end).finally(() => {
      this.ctx.deps.budget.inFlight--;
      this.fetching.delete(fetching);
      for (const p of grains) this.recycle(p);
    });
    this.fetching.add(fetching);
    const head = grains[0];
    if (!head) throw new BlobdiskError('failed', 'empty fetch');
    return head;
  }

  /** Gives grain `p`'s buffer back to the pool once it left the pending table (a reader
   *  may still find it there). */
  private recycle(p: PendingGrain): void {
    const buf = this.pending.get(p.idx) === p ? undefined : p.recycle();
    if (buf) this.buffers.give(buf);
  }

  private async run(grains: PendingGrain[], start: number, end: number): Promise<void> {
    const g = this.ctx.deps.grainSize;
    const epoch = this.ctx.epoch;
    const startedAt = this.ctx.timing.clock.now();
    // Grains complete in order as the bytes arrive; each is stored at once.
    const storing: Promise<void>[] = [];
    let next = 0;
    const completeUpTo = (pos: number): void => {
      for (let p = grains[next]; p && pos >= p.idx * g + p.to; p = grains[++next]) {
        this.unreachable.delete(p.idx);
        p.complete();
        storing.push(this.store(p, epoch));
      }
    };
    try {
      const now = startedAt;
      // A run that holds a grain just failed (the kernel's re-read, with read-ahead) fails with it.
      const recent = grains.map((p) => this.unreachable.get(p.idx)).find((f) => f !== undefined && now < f.until);
      if (recent !== undefined) throw recent.error;
      if (end > start) {
        // Under our lease every change is ours and only touches sectors the cache holds.
        const options = this.ctx.remote.leaseId === undefined ? { etag: this.ctx.remote.etag } : {};
        const stream = await this.ctx.deps.store.read(this.ctx.remote.ref, start, end - start, options);
        let pos = start;
        completeUpTo(pos);
        const grainAt = (at: number): PendingGrain => {
          const p = grains[Math.floor(at / g) - (grains[0]?.idx ?? 0)];
          if (!p || at >= p.idx * g + p.to) throw new BlobdiskError('failed', `Azure sent more bytes than asked for ${this.ctx.remote.ref.name}`);
          return p;
        };
        // Straight into the grains' buffers when the store can; the readers of a grain are
        // released as its bytes arrive, not when the pull of the whole grain is done.
        const direct = stream.direct;
        if (direct) {
          try {
            while (pos < end) {
              const p = grainAt(pos);
              const at = pos - p.idx * g;
              let seen = 0;
              const n = await direct.pull(p.data, at, p.to - at, (filled) => {
                p.arrived(filled - seen);
                seen = filled;
              });
              p.arrived(n - seen);
              if (n === 0) break;
              pos += n;
              this.ctx.counters.bytesDown += n;
              completeUpTo(pos);
            }
          } finally {
            if (pos < end) direct.cancel();
          }
        }
        for await (const chunk of direct ? [] : stream) {
          let used = 0;
          while (used < chunk.length) {
            const p = grainAt(pos);
            const take = Math.min(chunk.length - used, p.idx * g + p.to - pos);
            p.append(chunk, used, used + take);
            used += take;
            pos += take;
          }
          this.ctx.counters.bytesDown += chunk.length;
          completeUpTo(pos);
        }
        // The body was cut short: the connection, not the blob, failed.
        if (pos !== end) throw new BlobdiskError('unavailable', `Azure ended the read of ${this.ctx.remote.ref.name} at ${pos} instead of ${end}`);
      }
      completeUpTo(Infinity);
    } catch (e) {
      const error = isBlobdiskError(e) ? e : new BlobdiskError('failed', `reading ${this.ctx.remote.ref.name} failed: ${(e as Error).message}`, { cause: e });
      const { clock, tunables } = this.ctx.timing;
      // The grains complete before the failure are stored; the others fail.
      const failed = grains.slice(next);
      if (error.kind === 'unavailable' && clock.now() - startedAt >= tunables.silentAfterMs) {
        const until = clock.now() + tunables.failFastMs;
        for (const p of failed) if (!(this.unreachable.get(p.idx)?.error === error)) this.unreachable.set(p.idx, { error, until });
      }
      for (const p of failed) {
        p.fail(error);
        if (this.pending.get(p.idx) === p) this.pending.delete(p.idx);
      }
    } finally {
      await Promise.all(storing);
    }
  }

  /** Keeps complete grain `p` in the cache, then lets readers go to the cache and its buffer go. */
  private async store(p: PendingGrain, epoch: number): Promise<void> {
    try {
      // Checked under the grain lock, and again by the cache just before it keeps the
      // grain: a truncate or a change of the blob meanwhile makes these bytes stale.
      const valid = (): boolean => epoch === this.ctx.epoch;
      await this.ctx.locks.run(p.idx, async () => (valid() ? this.ctx.deps.cache.fill(this.ctx.id, p.idx, p.data, valid, p.checksum) : false));
    } catch (e) {
      this.ctx.deps.log.warn(`could not cache grain ${p.idx} of ${this.ctx.remote.ref.name}: ${(e as Error).message}`);
    } finally {
      if (this.pending.get(p.idx) === p) this.pending.delete(p.idx);
      p.stored();
      this.recycle(p);
    }
  }

  /** Lets go of fetches of grains reaching past `size` (a truncate): readers waiting on
   *  them are released, and they no longer answer new readers. */
  dropPast(size: number): void {
    for (const [idx, p] of this.pending) {
      if ((idx + 1) * this.ctx.deps.grainSize > size) {
        this.pending.delete(idx);
        p.stored();
      }
    }
  }

  /** Resolves when the fetches under way are done. */
  async settled(): Promise<void> {
    await Promise.all(this.fetching);
  }

  /** Lets fetches under way store their grains. */
  async close(): Promise<void> {
    await this.settled();
  }
}
