/* Byte-range arithmetic for `blobdisk diff`, apart from I/O: ranges are half-open
 * [start, end), and every function takes and returns them sorted and merged. */

import type { ByteRange } from '../store/types';

/** Sorts, drops empty ranges, merges overlapping and adjacent ones. */
export function merge(ranges: readonly ByteRange[]): ByteRange[] {
  const out: { start: number; end: number }[] = [];
  for (const r of ranges.filter((x) => x.end > x.start).sort((a, b) => a.start - b.start)) {
    const last = out[out.length - 1];
    if (last !== undefined && r.start <= last.end) last.end = Math.max(last.end, r.end);
    else out.push({ start: r.start, end: r.end });
  }
  return out;
}

/** The parts of `a` that `b` does not cover. */
export function subtract(a: readonly ByteRange[], b: readonly ByteRange[]): ByteRange[] {
  const out: ByteRange[] = [];
  let j = 0;
  for (const r of a) {
    let start = r.start;
    while (j < b.length && (b[j]?.end ?? 0) <= start) j++;
    for (let k = j; k < b.length && start < r.end; k++) {
      const cut = b[k];
      if (cut === undefined || cut.start >= r.end) break;
      if (cut.start > start) out.push({ start, end: cut.start });
      start = Math.max(start, cut.end);
    }
    if (start < r.end) out.push({ start, end: r.end });
  }
  return merge(out);
}

/** The parts both `a` and `b` cover. */
export function intersect(a: readonly ByteRange[], b: readonly ByteRange[]): ByteRange[] {
  const out: ByteRange[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    const x = a[i] as ByteRange;
    const y = b[j] as ByteRange;
    const start = Math.max(x.start, y.start);
    const end = Math.min(x.end, y.end);
    if (start < end) out.push({ start, end });
    if (x.end < y.end) i++;
    else j++;
  }
  return merge(out);
}

/** The `unit`-sized pieces (aligned at `offset`) in which `a` and `b` differ, as ranges. */
export function differing(a: Buffer, b: Buffer, offset: number, unit: number): ByteRange[] {
  const out: ByteRange[] = [];
  const length = Math.max(a.length, b.length);
  for (let at = 0; at < length; at += unit) {
    const end = Math.min(length, at + unit);
    if (!a.subarray(at, end).equals(b.subarray(at, end))) out.push({ start: offset + at, end: offset + end });
  }
  return merge(out);
}

/** Bytes covered by `ranges`. */
export function total(ranges: readonly ByteRange[]): number {
  return ranges.reduce((n, r) => n + r.end - r.start, 0);
}
