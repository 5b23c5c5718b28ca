/* The FUSE binding's fast path table (native/fuse3.c) in JavaScript, for unit tests: the
 * same publish/revoke/bind/drain/ack contract, and serve() calls that do what a libfuse
 * thread does with a kernel request: pread/pwrite on a published grain's descriptor and a
 * journal record, or undefined when JavaScript must serve it. The journal outlives a
 * "killed" process (afterKill), as the mapped file does. */

import fs from 'node:fs';
import { FAST_READ, FAST_WRITE, type FastTable } from '../../lib/cache/native';

const SECTOR = 512;
const REC_READ = 1;
const REC_WRITE = 2;

interface Grain {
  fd: number;
  flags: number;
  valid: Buffer | null;
}

/** The journal as the mapped file holds it: records [head, tail). */
interface Journal {
  records: number[][];
  head: number;
}

export class FakeFastTable implements FastTable {
  readonly grains = new Map<string, Grain>();
  private readonly bound = new Map<number, number>();
  private taken: number;
  reads = 0;
  writes = 0;

  constructor(
    private readonly grainSize: number,
    private readonly journal: Journal = { records: [], head: 0 },
  ) {
    this.taken = journal.head;
  }

  /** The table a new process gets over the same journal file after this one was killed. */
  afterKill(): FakeFastTable {
    return new FakeFastTable(this.grainSize, this.journal);
  }

  private get tail(): number {
    return this.journal.head + this.journal.records.length;
  }

  publish(imageId: number, idx: number, fd: number, flags: number, valid: Buffer | null): void {
    const key = `${imageId}:${idx}`;
    const known = this.grains.get(key);
    this.grains.set(key, { fd, flags: known && known.fd === fd ? known.flags | flags : flags, valid: valid ? Buffer.from(valid) : null });
  }

  revoke(imageId: number, idx: number): void {
    this.grains.delete(`${imageId}:${idx}`);
  }

  bind(fh: number, imageId: number): void {
    if (imageId === 0) this.bound.delete(fh);
    else this.bound.set(fh, imageId);
  }

  drain(): Float64Array | undefined {
    const from = this.taken - this.journal.head;
    const fresh = this.journal.records.slice(from);
    if (fresh.length === 0) return undefined;
    this.taken = this.tail;
    return Float64Array.from([this.tail, ...fresh.flat()]);
  }

  ack(position: number): void {
    if (position <= this.journal.head || position > this.taken) return;
    this.journal.records.splice(0, position - this.journal.head);
    this.journal.head = position;
  }

  served(): { reads: number; writes: number } {
    return { reads: this.reads, writes: this.writes };
  }

  /** Whether the grain is published with `flags`. */
  published(imageId: number, idx: number, flags = FAST_READ): boolean {
    const grain = this.grains.get(`${imageId}:${idx}`);
    return grain !== undefined && (grain.flags & flags) === flags;
  }

  private sectorsValid(grain: Grain, from: number, to: number): boolean {
    if (!grain.valid) return true;
    for (let s = Math.floor(from / SECTOR); s < Math.ceil(to / SECTOR); s++) if (((grain.valid[s >> 3] ?? 0) & (1 << (s & 7))) === 0) return false;
    return true;
  }

  /** A kernel write on handle `fh` as fast_write() serves it: the bytes written, or
   *  undefined when it goes to JavaScript. */
  write(fh: number, offset: number, data: Buffer): number | undefined {
    const g = this.grainSize;
    const imageId = this.bound.get(fh);
    const idx = Math.floor(offset / g);
    if (imageId === undefined || data.length === 0 || offset % SECTOR !== 0 || data.length % SECTOR !== 0 || Math.floor((offset + data.length - 1) / g) !== idx) return undefined;
    const grain = this.grains.get(`${imageId}:${idx}`);
    if (!grain || (grain.flags & FAST_WRITE) === 0) return undefined;
    fs.writeSync(grain.fd, data, 0, data.length, offset - idx * g);
    if (grain.valid) for (let s = (offset - idx * g) / SECTOR; s < (offset - idx * g + data.length) / SECTOR; s++) grain.valid[s >> 3] = (grain.valid[s >> 3] ?? 0) | (1 << (s & 7));
    this.journal.records.push([REC_WRITE, imageId, offset, data.length]);
    this.writes++;
    return data.length;
  }

  /** A kernel read on handle `fh` as fast_read() serves it: the bytes, or undefined when it
   *  goes to JavaScript. */
  read(fh: number, offset: number, length: number): Buffer | undefined {
    const g = this.grainSize;
    const imageId = this.bound.get(fh);
    if (imageId === undefined || length === 0) return undefined;
    const out = Buffer.alloc(length);
    for (let idx = Math.floor(offset / g); idx * g < offset + length; idx++) {
      const grain = this.grains.get(`${imageId}:${idx}`);
      const from = Math.max(offset, idx * g);
      const to = Math.min(offset + length, (idx + 1) * g);
      if (!grain || (grain.flags & FAST_READ) === 0 || !this.sectorsValid(grain, from - idx * g, to - idx * g)) return undefined;
      fs.readSync(grain.fd, out, from - offset, to - from, from - idx * g);
    }
    this.journal.records.push([REC_READ, imageId, offset, length]);
    this.reads++;
    return out;
  }
}
