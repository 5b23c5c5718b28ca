/* One grain on its way from Azure. The ranged GET streams into `data`; a reader waiting
 * for part of the grain is released as soon as its bytes have arrived, not when the
 * whole grain has (DESIGN: partial reads return early). Bytes of the grain outside
 * [from, to) are not fetched: they are known zeros (unallocated pages, or past the end). */

export class PendingGrain {
  readonly data: Buffer;
  private received = 0;
  private done = false;
  private failure: unknown;
  private waiters: { end: number; start: number; resolve: () => void; reject: (e: unknown) => void }[] = [];
  private settle: { resolve: () => void; reject: (e: unknown) => void } | undefined;
  /** Settles when the fetch is over and its bytes are in the cache (or could not be kept). */
  readonly finished: Promise<void>;

  constructor(
    readonly idx: number,
    length: number,
    /** First fetched byte within the grain. */
    readonly from: number,
    /** End of the fetched bytes within the grain. */
    readonly to: number,
  ) {
    this.data = Buffer.alloc(length);
    this.finished = new Promise<void>((resolve, reject) => (this.settle = { resolve, reject }));
    this.finished.catch(() => undefined);
  }

  /** The bytes are stored (or dropped): late readers go to the cache from now on. */
  stored(): void {
    this.settle?.resolve();
  }

  private ready(start: number, end: number): boolean {
    if (this.done) return true;
    if (end <= this.from || start >= this.to) return true;
    return Math.min(end, this.to) <= this.from + this.received;
  }

  /** Resolves once [start, end) of the grain is in `data`; rejects when the fetch fails first. */
  waitFor(start: number, end: number): Promise<void> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    if (this.ready(start, end)) return Promise.resolve();
    return new Promise((resolve, reject) => this.waiters.push({ start, end, resolve, reject }));
  }

  /** Appends the next bytes of the stream (the fetch writes them in order from `from`). */
  append(chunk: Buffer, chunkStart: number, chunkEnd: number): void {
    chunk.copy(this.data, this.from + this.received, chunkStart, chunkEnd);
    this.received += chunkEnd - chunkStart;
    this.release();
  }

  private release(): void {
    if (this.waiters.length === 0) return;
    const still: typeof this.waiters = [];
    for (const w of this.waiters) {
      if (this.ready(w.start, w.end)) w.resolve();
      else still.push(w);
    }
    this.waiters = still;
  }

  complete(): void {
    this.done = true;
    this.release();
  }

  get isComplete(): boolean {
    return this.done;
  }

  fail(e: unknown): void {
    if (this.done) return;
    this.failure = e;
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w.reject(e);
    this.settle?.reject(e);
  }
}
