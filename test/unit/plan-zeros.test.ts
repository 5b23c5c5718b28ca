import { CLEAR_UNIT, planPageUploads } from '../../lib/flusher/plan';

const K = 1024;
const M = 1024 * K;

/** A run of `length` bytes of data with zeros at [zeroFrom, zeroTo) (offsets within it). */
function holed(length: number, zeroFrom: number, zeroTo: number): Buffer {
  const b = Buffer.alloc(length, 9);
  b.fill(0, zeroFrom, zeroTo);
  return b;
}

describe('planPageUploads with holes punched into data (guest discard)', () => {
  it('clears the aligned 64 KiB pieces of a hole inside a run and puts the data around it', () => {
    // Zeros from 100 KiB to 1000 KiB of a 1 MiB run at 4 MiB: 128..960 KiB is whole units.
    const plan = planPageUploads([{ offset: 4 * M, data: holed(M, 100 * K, 1000 * K) }]);
    expect(plan.map((u) => [(u.offset - 4 * M) / K, u.data.length / K, u.zero])).toEqual([
      [0, 128, false],
      [128, 832, true],
      [960, 64, false],
    ]);
  });

  it('never joins the zero grains of a punched range with the data of the grain beside them', () => {
    // Grain 0 ends with data in its first sector only, grains 1 and 2 are zeros, grain 3 data:
    // before, the four joined into one Put Page of mostly zeros.
    const window = Buffer.alloc(4 * M);
    window.fill(5, 0, 512);
    window.fill(6, 3 * M);
    const plan = planPageUploads([0, 1, 2, 3].map((g) => ({ offset: g * M, data: window.subarray(g * M, (g + 1) * M) })));
    expect(plan.map((u) => [u.offset / K, u.data.length / K, u.zero])).toEqual([
      [0, 64, false],
      [64, 3 * 1024 - 64, true],
      [3 * 1024, 1024, false],
    ]);
    expect(plan[0]?.data.subarray(0, 512).every((b) => b === 5)).toBe(true);
  });

  it('keeps zeros shorter than a unit, or not aligned to one, with the data', () => {
    const plan = planPageUploads([{ offset: 0, data: holed(2 * CLEAR_UNIT, 1024, CLEAR_UNIT + 1024) }]);
    expect(plan.map((u) => [u.offset, u.data.length, u.zero])).toEqual([[0, 2 * CLEAR_UNIT, false]]);
  });
});
