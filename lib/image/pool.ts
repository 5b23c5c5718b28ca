/* Grain-sized buffers of one image, reused for fetches. A fresh
 * 1 MiB Buffer costs an mmap, zeroing, page faults and, through the external-memory
 * accounting, garbage collections: a cold sequential read spent about a third of its
 * CPU time there. Buffers come back only from owners that know no reader holds them. */

export class BufferPool {
  private readonly free: Buffer[] = [];

  constructor(
    readonly size: number,
    /** How many idle buffers are kept; more are left to the garbage collector. */
    private readonly keep: number,
  ) {}

  /** A buffer of `size` bytes with arbitrary content. */
  take(): Buffer {
    // Shared memory: with some tens of long-lived plain ArrayBuffers instead, V8 ran a
    // mark-compact of its old generation every 50 ms of a cold read (11–16 per 256 MiB
    // instead of 1). Copies in and out go through copyBytes() in pending.ts.
    return this.free.pop() ?? Buffer.from(new SharedArrayBuffer(this.size));
  }

  /** Returns `buf` for reuse; nobody may read or write it afterwards. */
  give(buf: Buffer): void {
    if (buf.length === this.size && this.free.length < this.keep) this.free.push(buf);
  }

  /** Lets the idle buffers go (the image is closing). */
  clear(): void {
    this.free.length = 0;
  }
}
