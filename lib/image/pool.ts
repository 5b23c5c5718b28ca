/* Grain-sized buffers for fetches, one pool for the whole mount. A fresh
 * 1 MiB Buffer costs an mmap, zeroing, page faults and, through the external-memory
 * accounting, garbage collections: a cold sequential read spent about a third of its
 * CPU time there. Buffers come back only from owners that know no reader holds them.
 * Idle buffers are let go once no fetch took one for a while, so a mount that read once
 * does not keep them for good. */

/** How long idle buffers are kept after the last take(). */
const IDLE_MS = 5_000;

export class BufferPool {
  private readonly free: Buffer[] = [];
  private lastTake = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    readonly size: number,
    /** How many idle buffers are kept; more are left to the garbage collector. */
    private readonly keep: number,
  ) {}

  /** A buffer of `size` bytes with arbitrary content. */
  take(): Buffer {
    this.lastTake = Date.now();
    // Shared memory: with some tens of long-lived plain ArrayBuffers instead, V8 ran a
    // mark-compact of its old generation every 50 ms of a cold read (11–16 per 256 MiB
    // instead of 1). Copies in and out go through copyBytes() in pending.ts.
    return this.free.pop() ?? Buffer.from(new SharedArrayBuffer(this.size));
  }

  /** Returns `buf` for reuse; nobody may read or write it afterwards. */
  give(buf: Buffer): void {
    if (buf.length !== this.size || this.free.length >= this.keep) return;
    this.free.push(buf);
    this.timer ??= setTimeout(() => this.idle(), IDLE_MS).unref();
  }

  /** How many idle buffers are kept now. */
  get idleCount(): number {
    return this.free.length;
  }

  private idle(): void {
    this.timer = undefined;
    const quiet = Date.now() - this.lastTake;
    if (quiet >= IDLE_MS) this.clear();
    else if (this.free.length > 0) this.timer = setTimeout(() => this.idle(), IDLE_MS - quiet).unref();
  }

  /** Lets the idle buffers go. */
  clear(): void {
    this.free.length = 0;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }
}
