/* One lock per grain: a write and a fill of the same grain never interleave, and a
 * truncate cuts the grain holding the new end under its lock. Locks are promise chains,
 * dropped when the last holder leaves. */

export class GrainLocks {
  private readonly locks = new Map<number, Promise<void>>();

  constructor(
    /** Told when a lock is first asked for: nothing may change the grain behind its holder
     *  (the FUSE binding stops serving it natively, see lib/cache/native.ts). */
    private readonly taking: (idx: number) => void = () => undefined,
  ) {}

  /** Whether anyone holds or waits for the lock of grain `idx`. */
  has(idx: number): boolean {
    return this.locks.has(idx);
  }

  /** Runs `fn` alone among the holders of grain `idx`'s lock. */
  async run<T>(idx: number, fn: () => Promise<T>): Promise<T> {
    this.taking(idx);
    const before = this.locks.get(idx) ?? Promise.resolve();
    let release: () => void = () => undefined;
    const mine = new Promise<void>((r) => (release = r));
    const chained = before.then(() => mine);
    this.locks.set(idx, chained);
    await before;
    try {
      return await fn();
    } finally {
      release();
      if (this.locks.get(idx) === chained) this.locks.delete(idx);
    }
  }
}
