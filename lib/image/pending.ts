/* One grain on its way from Azure. The ranged GET streams into `data`; a reader waiting
 * for part of the grain is released as soon as its bytes have arrived, not when the
 * whole grain has (DESIGN: partial reads return early). Bytes of the grain outside
 * [from, to) are not fetched: they are known zeros (unallocated pages, or past the end).
 * The grain's CRC-32 runs along as the bytes arrive (some 13 µs per 64 KiB chunk at the
 * 5 GB/s of the fast CRC), so the cache need not send the grain to its checksum worker and
 * wait for the answer.
 *
 * `data` comes from the image's buffer pool when the grain's first bytes arrive (a GET of
 * eight grains holds one or two buffers at a time, not eight), and goes back once the
 * grain is stored. Readers therefore take their bytes through copyTo(), which copies the
 * moment they have arrived, so none holds the buffer afterwards; a caller that reads
 * `data` itself after waitFor() makes the buffer its own for good (it is then not reused). */

import { crc32 } from '../cache/crc';

/** Copies source[start, end) to target at `at` with one native memcpy. Buffer.copy() goes
 *  through TypedArray.prototype.set, which V8 does with relaxed atomic loads and stores when
 *  either side is shared memory, as the grain buffers are; fill() with a value as long as
 *  the range it fills copies it once, with memcpy. */
function copyBytes(source: Buffer, start: number, end: number, target: Buffer, at: number): void {
  // Filled to the piece's own length: fill() would repeat a value shorter than its range.
  const piece = source.subarray(start, end);
  if (piece.length > 0) target.fill(piece, at, at + piece.length);
}

interface Waiter {
  readonly start: number;
  readonly end: number;
  /** Where the bytes go when they are there (copyTo), or nothing (waitFor). */
  readonly target: Buffer | undefined;
  readonly at: number;
  readonly resolve: () => void;
  readonly reject: (e: unknown) => void;
}

export class PendingGrain {
  private received = 0;
  /** CRC-32 of the grain's first from + received bytes (once `buf` is taken). */
  private crc = 0;
  /** Taken from the pool at the first use (see the file's header). */
  private buf: Buffer | undefined;
  private done = false;
  private lent = false;
  private released = false;
  private failure: unknown;
  private waiters: Waiter[] = [];
  private settle: { resolve: () => void; reject: (e: unknown) => void } | undefined;
  /** Settles when the fetch is over and its bytes are in the cache (or could not be kept). */
  readonly finished: Promise<void>;

  constructor(
    readonly idx: number,
    /** Gives the grain's buffer: pooled, of any content (zeroed here outside [from, to)). */
    private readonly take: () => Buffer,
    /** First fetched byte within the grain. */
    readonly from: number,
    /** End of the fetched bytes within the grain. */
    readonly to: number,
  ) {
    this.finished = new Promise<void>((resolve, reject) => (this.settle = { resolve, reject }));
    this.finished.catch(() => undefined);
  }

  /** The grain's bytes, for the fetch that fills them and the cache that stores them. */
  get data(): Buffer {
    if (this.released) throw new Error(`grain ${this.idx}: its fetch buffer was already reused`);
    if (this.buf) return this.buf;
    const buf = this.take();
    if (this.from > 0) buf.fill(0, 0, this.from);
    if (this.to < buf.length) buf.fill(0, this.to);
    this.crc = this.from > 0 ? crc32(buf.subarray(0, this.from)) : 0;
    return (this.buf = buf);
  }

  /** CRC-32 of the whole grain (`data`), once the fetch is complete. */
  get checksum(): number {
    if (!this.done) throw new Error(`grain ${this.idx}: its fetch is not complete`);
    return this.crc;
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

  /** Resolves once [start, end) of the grain is in `data`; rejects when the fetch fails
   *  first. The caller may read `data` afterwards: the buffer is then never reused. */
  waitFor(start: number, end: number): Promise<void> {
    this.lent = true;
    return this.wait(start, end, undefined, 0);
  }

  /** Copies [start, end) of the grain into `target` at `at` as soon as it has arrived;
   *  rejects when the fetch fails first. */
  copyTo(start: number, end: number, target: Buffer, at: number): Promise<void> {
    return this.wait(start, end, target, at);
  }

  private wait(start: number, end: number, target: Buffer | undefined, at: number): Promise<void> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    if (this.ready(start, end)) {
      if (target) copyBytes(this.data, start, end, target, at);
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => this.waiters.push({ start, end, target, at, resolve, reject }));
  }

  /** Appends the next bytes of the stream (the fetch writes them in order from `from`). */
  append(chunk: Buffer, chunkStart: number, chunkEnd: number): void {
    const at = this.from + this.received;
    copyBytes(chunk, chunkStart, chunkEnd, this.data, at);
    this.received += chunkEnd - chunkStart;
    this.crc = crc32(chunk.subarray(chunkStart, chunkEnd), this.crc);
    this.release();
  }

  /** `n` more bytes arrived, read straight into `data` after those before (a direct read
   *  pulls into `data` from where the last bytes ended up to `to`). */
  arrived(n: number): void {
    if (n <= 0) return;
    const at = this.from + this.received;
    this.crc = crc32(this.data.subarray(at, at + n), this.crc);
    this.received += n;
    this.release();
  }

  private release(): void {
    if (this.waiters.length === 0) return;
    const still: Waiter[] = [];
    for (const w of this.waiters) {
      if (this.ready(w.start, w.end)) {
        if (w.target) copyBytes(this.data, w.start, w.end, w.target, w.at);
        w.resolve();
      } else still.push(w);
    }
    this.waiters = still;
  }

  complete(): void {
    if (this.done) return;
    const buf = this.data;
    if (this.to < buf.length) this.crc = crc32(buf.subarray(this.to), this.crc);
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

  /** Hands the buffer back once the grain is stored (or its fetch failed) and it left the
   *  pending table: every reader has copied its bytes or failed. Returns it unless none was
   *  taken or a waitFor() caller may still read it. */
  recycle(): Buffer | undefined {
    if (this.released || this.lent || this.waiters.length > 0) return undefined;
    this.released = true;
    return this.buf;
  }
}
