/* Sector bitmaps: which 512-byte sectors of a grain hold data (valid) or wait for upload
 * (dirty). One bit per sector, so a 1 MiB grain needs 256 bytes. `null` stands for
 * "every sector" (valid) or "none" (dirty) and is what most grains carry. */

export const SECTOR = 512;

export function sectorsOf(length: number): number {
  return Math.ceil(length / SECTOR);
}

export function emptyBitmap(length: number): Buffer {
  return Buffer.alloc(Math.ceil(sectorsOf(length) / 8));
}

export function setBits(bm: Buffer, from: number, to: number): void {
  for (let s = from; s < to; s++) bm[s >> 3] = (bm[s >> 3] ?? 0) | (1 << (s & 7));
}

export function clearBitsFrom(bm: Buffer, from: number): void {
  for (let s = from; s < bm.length * 8; s++) bm[s >> 3] = (bm[s >> 3] ?? 0) & ~(1 << (s & 7));
}

export function hasBit(bm: Buffer, s: number): boolean {
  return ((bm[s >> 3] ?? 0) & (1 << (s & 7))) !== 0;
}

/** True when every sector in [from, to) is set. */
export function allSet(bm: Buffer, from: number, to: number): boolean {
  for (let s = from; s < to; s++) if (!hasBit(bm, s)) return false;
  return true;
}

export function anySet(bm: Buffer): boolean {
  for (const byte of bm) if (byte !== 0) return true;
  return false;
}

const POPCOUNT = Uint8Array.from({ length: 256 }, (_, b) => {
  let n = 0;
  for (let v = b; v !== 0; v >>= 1) n += v & 1;
  return n;
});

/** How many sectors are set (a byte at a time: status and flush progress ask often). */
export function countBits(bm: Buffer): number {
  let n = 0;
  for (const byte of bm) n += POPCOUNT[byte] ?? 0;
  return n;
}

/** Runs of set sectors as [first, end) sector pairs. */
export function runs(bm: Buffer, sectors: number): [number, number][] {
  const out: [number, number][] = [];
  let start = -1;
  for (let s = 0; s < sectors; s++) {
    const set = hasBit(bm, s);
    if (set && start < 0) start = s;
    if (!set && start >= 0) {
      out.push([start, s]);
      start = -1;
    }
  }
  if (start >= 0) out.push([start, sectors]);
  return out;
}

/** The sectors that [start, end) bytes touch. */
export function sectorSpan(start: number, end: number): [number, number] {
  return [Math.floor(start / SECTOR), Math.ceil(end / SECTOR)];
}
