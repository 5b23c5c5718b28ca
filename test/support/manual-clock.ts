/* A Clock for tests that moves only when told: advance() runs the timers that fall due,
 * in time order, letting the work they start run between them. It starts at the real
 * time, so timestamps stay plausible. */

import type { Clock, Timer } from '../../lib/clock';

interface Pending {
  at: number;
  readonly seq: number;
  readonly fn: () => void;
  readonly every?: number;
  cancelled: boolean;
}

/** Lets promise callbacks and I/O callbacks that are ready run. */
const turn = (): Promise<void> => new Promise((r) => setImmediate(r));

export class ManualClock implements Clock {
  private time = Date.now();
  private seq = 0;
  private readonly pending: Pending[] = [];

  now(): number {
    return this.time;
  }

  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => this.timeout(resolve, ms));
  }

  timeout(fn: () => void, ms: number): Timer {
    return this.add(fn, ms);
  }

  interval(fn: () => void, ms: number): Timer {
    return this.add(fn, ms, Math.max(1, ms));
  }

  private add(fn: () => void, ms: number, every?: number): Timer {
    const p: Pending = { at: this.time + Math.max(0, ms), seq: this.seq++, fn, cancelled: false, ...(every !== undefined ? { every } : {}) };
    this.pending.push(p);
    return { cancel: () => void (p.cancelled = true) };
  }

  /** Moves time forward by `ms`, firing what falls due on the way. */
  async advance(ms: number): Promise<void> {
    const end = this.time + ms;
    for (;;) {
      await turn();
      const live = this.pending.filter((p) => !p.cancelled && p.at <= end).sort((a, b) => a.at - b.at || a.seq - b.seq);
      const next = live[0];
      if (!next) break;
      this.time = Math.max(this.time, next.at);
      if (next.every !== undefined) next.at += next.every;
      else this.pending.splice(this.pending.indexOf(next), 1);
      next.fn();
    }
    this.time = end;
    for (let i = this.pending.length - 1; i >= 0; i--) if (this.pending[i]?.cancelled) this.pending.splice(i, 1);
    await turn();
  }
}

/** Resolves once `condition()` holds, looking after each turn of the event loop; rejects
 *  after `limitMs` of real time (a bound for a test that would otherwise hang). */
export async function until(condition: () => boolean, limitMs = 10_000): Promise<void> {
  const started = Date.now();
  while (!condition()) {
    if (Date.now() - started > limitMs) throw new Error(`condition not reached within ${limitMs} ms`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

/** Moves `clock` in small steps, with a turn of the event loop after each, until `p`
 *  settles (for work that polls or backs off on the clock); at most `maxSteps` steps. */
export async function driven<T>(clock: ManualClock, p: Promise<T>, stepMs = 50, maxSteps = 20_000): Promise<T> {
  let settled = false;
  const watched = p.finally(() => (settled = true));
  watched.catch(() => undefined);
  for (let i = 0; i < maxSteps && !settled; i++) {
    await clock.advance(stepMs);
    await new Promise((r) => setImmediate(r));
  }
  return watched;
}
