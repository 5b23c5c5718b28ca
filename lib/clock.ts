/* Time, injected: every layer that reads the time or waits takes a Clock through its
 * constructor (the system clock unless told otherwise), so that a test moves time
 * forward instead of sleeping (test/support/manual-clock.ts). */

export interface Timer {
  /** Stops it; calling it again does nothing. */
  cancel(): void;
}

export interface Clock {
  /** Milliseconds since the epoch, like Date.now(). */
  now(): number;
  /** Resolves `ms` from now. */
  sleep(ms: number): Promise<void>;
  /** Calls `fn` once, `ms` from now. Does not keep the process alive. */
  timeout(fn: () => void, ms: number): Timer;
  /** Calls `fn` every `ms`. Does not keep the process alive. */
  interval(fn: () => void, ms: number): Timer;
}

export const systemClock: Clock = Object.freeze({
  now: () => Date.now(),
  sleep: (ms: number) => new Promise<void>((r) => setTimeout(r, ms)),
  timeout(fn: () => void, ms: number): Timer {
    const t = setTimeout(fn, ms);
    t.unref();
    return { cancel: () => clearTimeout(t) };
  },
  interval(fn: () => void, ms: number): Timer {
    const t = setInterval(fn, ms);
    t.unref();
    return { cancel: () => clearInterval(t) };
  },
});
