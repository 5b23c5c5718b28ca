/* CRC-32 of grains off the event loop. zlib.crc32 runs at about 2 GB/s here, so checking a
 * 1 MiB grain holds every FUSE request up for half a millisecond; a worker thread reads
 * grains whose memory is shared (SharedArrayBuffer, as the image's grain buffers are)
 * without a copy. Other buffers are checked inline. */

import { Worker } from 'node:worker_threads';
import zlib from 'node:zlib';

const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const zlib = require('node:zlib');
parentPort.on('message', ({ id, memory, offset, length }) => {
  parentPort.postMessage({ id, crc: zlib.crc32(new Uint8Array(memory, offset, length)) });
});
`;

export class Crc32 {
  private worker: Worker | undefined;
  private nextId = 0;
  private readonly waiting = new Map<number, { resolve: (crc: number) => void; reject: (e: unknown) => void }>();

  /** The CRC-32 of `data`; `data` must not change until the promise settles. */
  of(data: Buffer): Promise<number> {
    if (!(data.buffer instanceof SharedArrayBuffer)) return Promise.resolve(zlib.crc32(data));
    const worker = this.start();
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      if (this.waiting.size === 1) worker.ref();
      worker.postMessage({ id, memory: data.buffer, offset: data.byteOffset, length: data.length });
    });
  }

  private start(): Worker {
    if (this.worker) return this.worker;
    const worker = new Worker(WORKER_SOURCE, { eval: true });
    worker.unref();
    worker.on('message', ({ id, crc }: { id: number; crc: number }) => {
      const w = this.waiting.get(id);
      this.waiting.delete(id);
      if (this.waiting.size === 0) worker.unref();
      w?.resolve(crc);
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
