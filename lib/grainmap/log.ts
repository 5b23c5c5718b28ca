/* The grain map's change log: an append-only file next to the database that takes the
 * changes of the write path (a grain's row, an image's size) with one pwrite each, where a
 * SQLite commit costs tens of microseconds. A change is committed once its record is in
 * the file (a kill -9 cannot undo a returned pwrite); GrainMap folds the records into
 * SQLite in batches and empties the file, and replays it at open after a crash.
 *
 * A record is [u32 body length][u32 CRC-32 of the body][body]; the body starts with a
 * sequence number. SQLite keeps the number of the last record folded, so records the file
 * still holds after a crash between a fold and the emptying are skipped; reading stops at
 * the first torn record or gap in the numbers (only unsynced data can be lost that way). */

import zlib from 'node:zlib';
import { Disk } from './disk';
import type { GrainRow } from './rows';

export type LogRecord =
  | { readonly kind: 'grain'; readonly row: GrainRow }
  | { readonly kind: 'size'; readonly imageId: number; readonly size: number };

const HEADER = 8;
const GRAIN = 1;
const SIZE = 2;
/** Largest body read back; a longer length is a torn header. */
const MAX_BODY = 1 << 20;

function bitmapLength(b: Buffer | null): number {
  return b === null ? 0 : b.length;
}

export class GrainLog {
  private scratch = Buffer.allocUnsafe(4096);

  private constructor(
    private readonly disk: Disk,
    private readonly fd: number,
    private end: number,
  ) {}

  /** Opens (creating when absent) the log at `file`; appends go after what it holds. */
  static open(file: string, disk: Disk): GrainLog {
    const fd = disk.openSync(file, true);
    return new GrainLog(disk, fd, disk.sizeSync(fd));
  }

  /** Whether the file holds records (folded or not). */
  get empty(): boolean {
    return this.end === 0;
  }

  /** The records numbered after `applied`, in order, up to the first torn one or gap. */
  read(applied: number): { seq: number; record: LogRecord }[] {
    const data = Buffer.alloc(this.end);
    let got = 0;
    while (got < data.length) {
      const n = this.disk.readSync(this.fd, data, got, data.length - got, got);
      if (n === 0) break;
      got += n;
    }
    const out: { seq: number; record: LogRecord }[] = [];
    let expect = applied + 1;
    for (let at = 0; at + HEADER <= got; ) {
      const length = data.readUInt32LE(at);
      if (length < 9 || length > MAX_BODY || at + HEADER + length > got) break;
      const body = data.subarray(at + HEADER, at + HEADER + length);
      if (zlib.crc32(body) !== data.readUInt32LE(at + 4)) break;
      at += HEADER + length;
      const seq = body.readDoubleLE(0);
      if (seq <= applied) continue;
      if (seq !== expect) break;
      const record = decode(body);
      if (!record) break;
      out.push({ seq, record });
      expect++;
    }
    return out;
  }

  /** Appends one record (one pwrite); it survives the process once this returns. */
  append(seq: number, record: LogRecord): void {
    const need = HEADER + 8 + 1 + (record.kind === 'grain' ? 40 + bitmapLength(record.row.valid) + bitmapLength(record.row.dirty) : 12);
    if (this.scratch.length < need) this.scratch = Buffer.allocUnsafe(need * 2);
    const b = this.scratch;
    let at = HEADER;
    at = b.writeDoubleLE(seq, at);
    if (record.kind === 'grain') {
      const r = record.row;
      at = b.writeUInt8(GRAIN, at);
      at = b.writeUInt32LE(r.imageId, at);
      at = b.writeDoubleLE(r.idx, at);
      at = b.writeUInt32LE(r.length, at);
      at = b.writeDoubleLE(r.checksum ?? NaN, at);
      at = b.writeDoubleLE(r.lastAccess, at);
      for (const bitmap of [r.valid, r.dirty]) {
        at = b.writeInt32LE(bitmap === null ? -1 : bitmap.length, at);
        if (bitmap !== null) at += bitmap.copy(b, at);
      }
    } else {
      at = b.writeUInt8(SIZE, at);
      at = b.writeUInt32LE(record.imageId, at);
      at = b.writeDoubleLE(record.size, at);
    }
    b.writeUInt32LE(at - HEADER, 0);
    b.writeUInt32LE(zlib.crc32(b.subarray(HEADER, at)), 4);
    let written = 0;
    while (written < at) written += this.disk.writeSync(this.fd, b, written, at - written, this.end + written);
    this.end += at;
  }

  /** Empties the file (every record in it is folded). */
  clear(): void {
    this.disk.ftruncateSync(this.fd, 0);
    this.end = 0;
  }

  close(): void {
    this.disk.closeSync(this.fd);
  }
}

function decode(body: Buffer): LogRecord | undefined {
  let at = 8;
  const kind = body.readUInt8(at++);
  if (kind === SIZE && body.length === at + 12) {
    return { kind: 'size', imageId: body.readUInt32LE(at), size: body.readDoubleLE(at + 4) };
  }
  if (kind !== GRAIN || body.length < at + 40) return undefined;
  const imageId = body.readUInt32LE(at);
  const idx = body.readDoubleLE(at + 4);
  const length = body.readUInt32LE(at + 12);
  const checksum = body.readDoubleLE(at + 16);
  const lastAccess = body.readDoubleLE(at + 24);
  at += 32;
  const bitmaps: (Buffer | null)[] = [];
  for (let i = 0; i < 2; i++) {
    if (at + 4 > body.length) return undefined;
    const n = body.readInt32LE(at);
    at += 4;
    if (n < 0) {
      bitmaps.push(null);
      continue;
    }
    if (at + n > body.length) return undefined;
    bitmaps.push(Buffer.from(body.subarray(at, at + n)));
    at += n;
  }
  if (at !== body.length) return undefined;
  return {
    kind: 'grain',
    row: { imageId, idx, length, checksum: Number.isNaN(checksum) ? null : checksum, valid: bitmaps[0] ?? null, dirty: bitmaps[1] ?? null, lastAccess },
  };
}
