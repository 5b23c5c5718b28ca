/* CRC-32 of grains off the event loop. The SIMD CRC-32 of @node-rs/crc32 (the same
 * checksum as zlib's, so the checksums in existing grain maps stay valid) runs at about
 * 5 GB/s here; zlib.crc32, used where that module's prebuilt binary is missing, at about
 * 2 GB/s. Even the fast one would hold every FUSE request up for a fifth of a millisecond
 * per 1 MiB grain, so a worker thread reads grains whose memory is shared
 * (SharedArrayBuffer, as the flusher's upload buffers are) without a copy. Other buffers
 * are checked inline; a fetched grain's checksum runs along with its chunks (see
 * lib/image/pending.ts). The worker also checks grain files itself, a chunk at a time through
 * one small buffer that stays in the CPU cache, so that checking a grain needs neither a
 * grain-sized buffer nor a turn of the event loop per read; and it reads the start of
 * grain files a sequential reader is about to reach, so that the kernel reads them ahead,
 * at the cost of one message instead of an open, reads and a close through the thread
 * pool, each a turn of the event loop. */

import { Worker } from 'node:worker_threads';
import zlib from 'node:zlib';

type Crc32Fn = (data: Buffer, initial?: number) => number;

/** The fast CRC-32 and the path of its module, for the worker to load too (undefined: not loadable). */
const FAST: { readonly module: string; readonly crc32: Crc32Fn } | undefined = (() => {
  try {
    const module = require.resolve('@node-rs/crc32');
    const fast = (require(module) as { crc32: Crc32Fn }).crc32;
    fast(Buffer.alloc(1));
    return { module, crc32: fast };
  } catch {
    return undefined;
  }
})();

/** CRC-32 (as zlib computes it) of `data`, continuing from `initial`. */
export const crc32: Crc32Fn = FAST?.crc32 ?? ((data, initial) => zlib.crc32(data, initial));

/** The worker reads files this much at a time. */
const FILE_CHUNK = 128 * 1024;
/** warm() reads this much twice at the start of a file: the kernel takes the first read
 *  for the start of a sequential stream and the second one, which continues it, starts
 *  its asynchronous read-ahead of the rest of the file. */
const WARM_READ = 64 * 1024;

const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const fs = require('node:fs');
const zlib = require('node:zlib');
const crc32 = workerData.fast ? require(workerData.fast).crc32 : (data, initial) => zlib.crc32(data, initial);
const chunk = Buffer.allocUnsafe(${FILE_CHUNK});
function ofFile(file, length) {
  const fd = fs.openSync(file, 'r');
  try {
    let crc = 0;
    for (let at = 0; at < length; ) {
      const want = Math.min(chunk.length, length - at);
      let got = 0;
      while (got < want) {
        const n = fs.readSync(fd, chunk, got, want - got, at + got);
        if (n === 0) break;
        got += n;
      }
      chunk.fill(0, got, want); // the part the file lacks reads as zeros
      crc = crc32(chunk.subarray(0, want), crc);
      at += want;
    }
    return crc;
  } finally {
    fs.closeSync(fd);
  }
}
function warm(file, length) {
  const fd = fs.openSync(file, 'r');
  try {
    for (let at = 0; at < Math.min(2 * ${WARM_READ}, length); at += ${WARM_READ}) {
      if (fs.readSync(fd, chunk, 0, ${WARM_READ}, at) < ${WARM_READ}) break;
    }
  } finally {
    fs.closeSync(fd);
  }
}
parentPort.on('message', ({ id, memory, offset, length, file }) => {
  // Without an id, a hint from warm(): nothing goes back.
  if (id === undefined) {
    try {
      warm(file, length);
    } catch {
      // Only a hint: whoever reads the file finds out what is wrong with it.
    }
    return;
  }
  if (file === undefined) {
    parentPort.postMessage({ id, crc: crc32(Buffer.from(memory, offset, length)) });
    return;
  }
  try {
    parentPort.postMessage({ id, crc: ofFile(file, length) });
  } catch (e) {
    parentPort.postMessage({ id, error: { code: e.code, message: e.message } });
  }
});
`;

/** A file the worker could not read; `code` is the errno name (ENOENT, EIO, ...). */
export class FileCheckError extends Error {
  constructor(
    readonly code: string | undefined,
    message: string,
  ) {
    super(message);
  }
}

export class Crc32 {
  private worker: Worker | undefined;
  private nextId = 0;
  private readonly waiting = new Map<number, { resolve: (crc: number) => void; reject: (e: unknown) => void }>();

  /** The CRC-32 of `data`; `data` must not change until the promise settles. */
  of(data: Buffer): Promise<number> {
    if (!(data.buffer instanceof SharedArrayBuffer)) return Promise.resolve(crc32(data));
    return this.ask({ memory: data.buffer, offset: data.byteOffset, length: data.length });
  }

  /** The CRC-32 of the first `length` bytes of `file` (what it lacks counts as zeros).
   *  Rejects with FileCheckError when the file cannot be read. */
  ofFile(file: string, length: number): Promise<number> {
    return this.ask({ file, length });
  }

  /** Starts the worker thread now; otherwise it starts on first use, which then waits for it. */
  startNow(): void {
    this.start();
  }

  /** Has the worker read the start of `file`, of `length` bytes, so that the kernel reads
   *  the rest of it ahead into the page cache. A hint: nothing comes back, not even an error. */
  warm(file: string, length: number): void {
    this.start().postMessage({ file, length });
  }

  private ask(job: { memory: SharedArrayBuffer; offset: number; length: number } | { file: string; length: number }): Promise<number> {
    const worker = this.start();
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      if (this.waiting.size === 1) worker.ref();
      worker.postMessage({ id, ...job });
    });
  }

  private start(): Worker {
    if (this.worker) return this.worker;
    const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { fast: FAST?.module } });
    worker.unref();
    worker.on('message', ({ id, crc, error }: { id: number; crc?: number; error?: { code?: string; message: string } }) => {
      const w = this.waiting.get(id);
      this.waiting.delete(id);
      if (this.waiting.size === 0) worker.unref();
      if (crc !== undefined) w?.resolve(crc);
      else w?.reject(new FileCheckError(error?.code, error?.message ?? 'the checksum worker failed'));
    });
    const fail = (e: unknown): void => {
      if (this.worker === worker) this.worker = undefined;
      const waiting = [...this.waiting.values()];
      this.waiting.clear();
      for (const w of waiting) w.reject(e);
    };
    worker.on('error', fail);
    worker.on('exit', (code) => fail(new Error(`the checksum worker exited (${code})`)));
    this.worker = worker;
    return worker;
  }

  async close(): Promise<void> {
    const worker = this.worker;
    this.worker = undefined;
    if (worker) await worker.terminate();
  }
}
