import { blockSizeFor, planBlocks, planPageUploads } from '../../lib/flusher/plan';

const M = 1024 * 1024;

describe('planPageUploads', () => {
  it('joins neighbouring runs up to 4 MiB, splits bigger ones, and marks zero runs for Clear Pages', () => {
    const plan = planPageUploads([
      { offset: 0, data: Buffer.alloc(M, 1) },
      { offset: M, data: Buffer.alloc(M, 2) }, // joins the first
      { offset: 3 * M, data: Buffer.alloc(M) }, // not adjacent: zeros on their own
      { offset: 8 * M, data: Buffer.alloc(9 * M, 3) }, // split in 4 + 4 + 1
    ]);
    expect(plan.map((u) => [u.offset / M, u.data.length / M, u.zero])).toEqual([
      [0, 2, false],
      [3, 1, true],
      [8, 4, false],
      [12, 4, false],
      [16, 1, false],
    ]);
    expect(plan.every((u) => u.data.length <= 4 * M)).toBe(true);
  });

  it('joins runs that lie side by side in one buffer as a view of it, not a copy', () => {
    const window = Buffer.alloc(6 * M, 7);
    const plan = planPageUploads([
      { offset: 10 * M, data: window.subarray(0, M) },
      { offset: 11 * M, data: window.subarray(M, 3 * M) },
      { offset: 13 * M, data: window.subarray(3 * M, 5 * M) }, // would pass 4 MiB: its own call
      { offset: 15 * M, data: Buffer.alloc(M, 7) }, // another buffer: joined by a copy
    ]);
    expect(plan.map((u) => [u.offset / M, u.data.length / M])).toEqual([
      [10, 3],
      [13, 3],
    ]);
    expect(plan[0]?.data.buffer).toBe(window.buffer);
    expect(plan[0]?.data.equals(Buffer.alloc(3 * M, 7))).toBe(true);
    expect(plan[1]?.data.buffer).not.toBe(window.buffer);
    expect(plan[1]?.data.equals(Buffer.alloc(3 * M, 7))).toBe(true);
  });
});

describe('blockSizeFor', () => {
  it('stays at the grain size for most images and doubles to keep under Azure’s 50,000 blocks', () => {
    expect(blockSizeFor(10 * 1024 * M, M)).toBe(M);
    expect(blockSizeFor(100 * 1024 * M, M)).toBe(4 * M);
    expect(Math.ceil((4 * 1024 * 1024 * M) / blockSizeFor(4 * 1024 * 1024 * M, M))).toBeLessThanOrEqual(40_000);
  });
});

describe('planBlocks', () => {
  const committed = [
    { id: 'a', start: 0, end: 4 * M },
    { id: 'b', start: 4 * M, end: 104 * M },
    { id: 'c', start: 104 * M, end: 105 * M },
  ];
  it('keeps untouched blocks and restages a touched foreign block in pieces', () => {
    const plan = planBlocks(committed, [{ start: 50 * M, end: 50 * M + 512 }], 105 * M, 16 * M);
    expect(plan[0]).toEqual({ keep: 'a' });
    expect(plan[plan.length - 1]).toEqual({ keep: 'c' });
    const staged = plan.filter((p) => 'stage' in p).map((p) => ('stage' in p ? [p.stage.start / M, p.stage.end / M] : []));
    expect(staged).toEqual([[4, 16], [16, 32], [32, 48], [48, 64], [64, 80], [80, 96], [96, 104]]);
  });
  it('cuts at a shrink and stages what lies past the old end', () => {
    expect(planBlocks(committed, [], 3 * M, M)).toEqual([{ stage: { start: 0, end: M } }, { stage: { start: M, end: 2 * M } }, { stage: { start: 2 * M, end: 3 * M } }]);
    const grown = planBlocks(committed, [{ start: 105 * M, end: 106 * M }], 106 * M, 4 * M);
    expect(grown.slice(0, 3)).toEqual([{ keep: 'a' }, { keep: 'b' }, { keep: 'c' }]);
    expect(grown[3]).toEqual({ stage: { start: 105 * M, end: 106 * M } });
  });
  it('stages the whole blob when it was uploaded in one piece (no block ids)', () => {
    expect(planBlocks([{ id: undefined, start: 0, end: 2 * M }], [], 2 * M, M)).toEqual([
      { stage: { start: 0, end: M } },
      { stage: { start: M, end: 2 * M } },
    ]);
  });
});
