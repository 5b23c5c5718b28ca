/* Pure planning for uploads, kept apart from the I/O so tests can pin it:
 *  - page blobs: dirty sector runs of neighbouring grains joined into Put Page calls of at
 *    most 4 MiB; runs of zeros become Clear Pages, never an upload of zeros, and so does
 *    every aligned 64 KiB of zeros inside a run of data (a punched hole next to data);
 *  - block blobs: the block size for an image (Azure allows 50,000 committed blocks) and
 *    which committed blocks a flush keeps and which ranges it stages anew. */

import { MAX_COMMITTED_BLOCKS, MAX_PUT_PAGE_BYTES } from '../store/types';

export interface PageUpload {
  readonly offset: number;
  readonly data: Buffer;
  /** All zeros: send Clear Pages for the range instead of the bytes. */
  readonly zero: boolean;
}

const ZEROS = Buffer.alloc(MAX_PUT_PAGE_BYTES);

export function isZero(buf: Buffer): boolean {
  for (let at = 0; at < buf.length; at += ZEROS.length) {
    const part = buf.subarray(at, Math.min(buf.length, at + ZEROS.length));
    if (!part.equals(ZEROS.subarray(0, part.length))) return false;
  }
  return true;
}

/** Zeros inside a run of data become Clear Pages in aligned pieces of this size: smaller
 *  ones go up with the data around them rather than as calls of their own. */
export const CLEAR_UNIT = 64 * 1024;

/** Cuts a run that is not all zeros where whole aligned CLEAR_UNITs of zeros begin and end. */
function splitZeros(run: { offset: number; data: Buffer }): { offset: number; data: Buffer; zero: boolean }[] {
  if (isZero(run.data)) return [{ ...run, zero: true }];
  const out: { offset: number; data: Buffer; zero: boolean }[] = [];
  for (let at = 0; at < run.data.length; ) {
    const next = Math.min(run.data.length, (Math.floor((run.offset + at) / CLEAR_UNIT) + 1) * CLEAR_UNIT - run.offset);
    const zero = next - at === CLEAR_UNIT && isZero(run.data.subarray(at, next));
    const last = out[out.length - 1];
    if (last && last.zero === zero) last.data = run.data.subarray(last.offset - run.offset, next);
    else out.push({ offset: run.offset + at, data: run.data.subarray(at, next), zero });
    at = next;
  }
  return out;
}

/** Joins byte runs (sorted by offset, sector-aligned) into Put Page / Clear Pages calls;
 *  zeros and data are never joined. Runs that lie side by side in one buffer are joined as
 *  a view, without a copy. */
export function planPageUploads(runs: ReadonlyArray<{ offset: number; data: Buffer }>): PageUpload[] {
  const joined: { offset: number; parts: Buffer[]; length: number; zero: boolean }[] = [];
  for (const run of runs.flatMap(splitZeros)) {
    const last = joined[joined.length - 1];
    if (last && last.zero === run.zero && last.offset + last.length === run.offset && last.length + run.data.length <= MAX_PUT_PAGE_BYTES) {
      const tail = last.parts[last.parts.length - 1] as Buffer;
      if (tail.buffer === run.data.buffer && tail.byteOffset + tail.length === run.data.byteOffset) {
        last.parts[last.parts.length - 1] = Buffer.from(tail.buffer, tail.byteOffset, tail.length + run.data.length);
      } else {
        last.parts.push(run.data);
      }
      last.length += run.data.length;
    } else {
      for (let at = 0; at < run.data.length; at += MAX_PUT_PAGE_BYTES) {
        const data = run.data.subarray(at, Math.min(run.data.length, at + MAX_PUT_PAGE_BYTES));
        joined.push({ offset: run.offset + at, parts: [data], length: data.length, zero: run.zero });
      }
    }
  }
  const out: PageUpload[] = [];
  for (const j of joined) {
    const data = j.parts.length === 1 ? (j.parts[0] as Buffer) : Buffer.concat(j.parts, j.length);
    out.push({ offset: j.offset, data, zero: j.zero || isZero(data) });
  }
  return out;
}

/** Blocks an image of `size` bytes is cut into: a grain multiple, doubled until the image
 *  needs at most 40,000 blocks (room under Azure's 50,000 for growth and kept blocks). */
export function blockSizeFor(size: number, grainSize: number): number {
  let block = grainSize;
  while (Math.ceil(size / block) > 40_000) block *= 2;
  return block;
}

export interface CommittedBlock {
  /** Undefined for the implicit single block of a blob uploaded in one Put Blob. */
  readonly id: string | undefined;
  readonly start: number;
  readonly end: number;
}

export type PlannedBlock = { readonly keep: string } | { readonly stage: { readonly start: number; readonly end: number } };

/** The new block list for an image of `size` bytes whose bytes in `changed` (sorted,
 *  disjoint ranges) differ from Azure's: blocks untouched by a change are kept; the
 *  ranges of touched blocks, and everything past the last block, are staged anew in
 *  pieces of at most `blockSize`. */
export function planBlocks(committed: readonly CommittedBlock[], changed: ReadonlyArray<{ start: number; end: number }>, size: number, blockSize: number): PlannedBlock[] {
  const touched = (start: number, end: number): boolean => changed.some((c) => c.start < end && c.end > start);
  const out: PlannedBlock[] = [];
  const stage = (start: number, end: number): void => {
    for (let at = start; at < end; ) {
      const next = Math.min(end, (Math.floor(at / blockSize) + 1) * blockSize);
      out.push({ stage: { start: at, end: next } });
      at = next;
    }
  };
  let covered = 0;
  for (const block of committed) {
    if (block.start >= size) break;
    const end = Math.min(block.end, size);
    if (block.id !== undefined && end === block.end && !touched(block.start, end)) out.push({ keep: block.id });
    else stage(block.start, end);
    covered = end;
  }
  stage(covered, size);
  if (out.length > MAX_COMMITTED_BLOCKS) {
    out.length = 0;
    stage(0, size);
  }
  return out;
}
