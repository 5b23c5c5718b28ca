/* Crash-consistent checkpoints over the in-memory store with a manual clock: every checkpoint
 * holds the image exactly as it was at one fsync, while writes to the checkpoint's own grains
 * and to others go on during its uploads; a write that waits too long abandons the checkpoint
 * instead of failing; only the newest N of blobdisk's checkpoints are kept, never a user's
 * snapshot. */

import crypto from 'node:crypto';
import { BlobdiskError } from '../../lib/errors';
import { CHECKPOINT_KEY, SNAPSHOT_NAME_KEY } from '../../lib/remote/checkpoint';
import { FaultyStore } from '../../lib/store/faulty';
import { DEFAULT_TUNABLES } from '../../lib/tunables';
import { Image } from '../../lib/image/image';
import { harness, Harness } from '../support/image-harness';
import { ManualClock, driven, until } from '../support/manual-clock';
import { seeded } from '../support/seeded';
import { MemoryStore } from '../support/memory-store';

const G = 64 * 1024;
const GRAINS = 16;
const SIZE = GRAINS * G;
const disk = { container: 'c', name: 'disk.img' };
const WAIT_MS = 30_000;


interface Setup {
  clock: ManualClock;
  memory: MemoryStore;
  faulty: FaultyStore;
  h: Harness;
  image: Image;
}

async function setup(keep: number, intervalMs = 0): Promise<Setup> {
  const clock = new ManualClock();
  const memory = new MemoryStore({ containers: ['c'], clock });
  await memory.createPageBlob(disk, SIZE);
  const faulty = new FaultyStore(memory, clock);
  const h = harness(faulty, { writeBackDelayMs: 100, timing: { clock, tunables: DEFAULT_TUNABLES }, checkpoints: { keep, intervalMs, waitMs: WAIT_MS } });
  const image = await h.open(disk);
  return { clock, memory, faulty, h, image };
}

async function checkpointsOf(memory: MemoryStore): Promise<{ id: string; name: string | undefined; content: Buffer }[]> {
  const snaps = await memory.listSnapshots('c', 'disk.img');
  return snaps
    .filter((s) => s.metadata[CHECKPOINT_KEY] !== undefined)
    .map((s) => ({ id: s.snapshot, name: s.metadata[SNAPSHOT_NAME_KEY], content: memory.contentOf({ ...disk, snapshot: s.snapshot }) }));
}

/** Which recorded fsync state `content` equals, or -1. */
const stateOf = (states: readonly Buffer[], content: Buffer): number => states.findIndex((s) => s.equals(content));

it('every checkpoint equals the image at one fsync, with writes to its grains and to others during its uploads', async () => {
  const seed = Number(process.env.CHECKPOINT_SEED ?? 20261207);
  const rnd = seeded(seed);
  const { clock, memory, faulty, h, image } = await setup(1000);
  const unavailable = new BlobdiskError('unavailable', 'putPages failed: 503 ServerBusy');
  const model = Buffer.alloc(SIZE);
  const states: Buffer[] = [Buffer.from(model)];
  let inBarrier = 0;
  let outsideBarrier = 0;
  try {
    let outstanding: Promise<number>[] = [];
    for (let round = 0; round < 25; round++) {
      // One write per grain in a round (distinct grains, so their order does not matter).
      const grains = new Set<number>();
      const count = 1 + Math.floor(rnd() * 5);
      while (grains.size < count) grains.add(Math.floor(rnd() * GRAINS));
      // Uploads take a while, or fail and are retried, so writes meet open barriers and a
      // barrier spans several upload passes.
      if (rnd() < 0.4) faulty.inject({ ops: ['putPages'], skip: Math.floor(rnd() * 2), times: 1, action: { kind: 'fail', error: unavailable } });
      else faulty.inject({ ops: ['putPages'], times: 3, action: { kind: 'delay', ms: 300 } });
      for (const idx of grains) {
        const from = Math.floor(rnd() * 120) * 512;
        const len = (1 + Math.floor(rnd() * 8)) * 512;
        const data = crypto.randomBytes(len);
        const cp = image.checkpoints;
        if (cp?.open) {
          if (cp.holds(idx)) inBarrier++;
          else outsideBarrier++;
        }
        data.copy(model, idx * G + from);
        outstanding.push(image.write(data, idx * G + from));
      }
      // Some rounds fsync while the writes are still waiting; they are part of the next one.
      if (rnd() < 0.7) {
        await driven(clock, Promise.all(outstanding));
        outstanding = [];
        await driven(clock, image.fsync());
        states.push(Buffer.from(model));
      }
      await clock.advance(Math.floor(rnd() * 400));
    }
    await driven(clock, Promise.all(outstanding));
    await driven(clock, h.flusher.flush([image]));
    expect(memory.contentOf(disk).equals(model)).toBe(true);
    expect(inBarrier).toBeGreaterThan(0);
    expect(outsideBarrier).toBeGreaterThan(0);
    const cps = await checkpointsOf(memory);
    expect(cps.length).toBeGreaterThan(3);
    let previous = -1;
    for (const cp of cps) {
      const at = stateOf(states, cp.content);
      if (at < 0) throw new Error(`seed ${seed}: checkpoint ${cp.name ?? cp.id} equals no fsync's image`);
      // Oldest first: each later checkpoint is a later fsync.
      expect(at).toBeGreaterThan(previous);
      previous = at;
      expect(cp.name).toMatch(/^checkpoint-\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    }
    expect(image.checkpoints?.last).toBeDefined();
  } finally {
    faulty.heal();
    await h.close();
  }
});

it('a write that waits --io-timeout for a grain of the checkpoint abandons it, and is never failed for it', async () => {
  const { clock, memory, faulty, h, image } = await setup(10);
  try {
    const a = crypto.randomBytes(4096);
    await image.write(a, 0);
    await image.write(a, 3 * G);
    const hang = { ops: ['putPages'], times: Infinity, action: { kind: 'hang' } } as const;
    faulty.inject(hang);
    await image.fsync();
    expect(image.checkpoints?.open).toBe(true);
    // The flusher starts uploading the checkpoint's grains, and Azure does not answer.
    // The upload reads the grain files on the thread pool: give it real time too.
    for (let i = 0; i < 400 && faulty.hitsOf(hang) === 0; i++) {
      await clock.advance(50);
      await new Promise((r) => setTimeout(r, 5));
    }
    expect(faulty.hitsOf(hang)).toBeGreaterThan(0);
    // A write to another grain lands at once; one to a grain of the checkpoint waits.
    await image.write(crypto.randomBytes(4096), 7 * G);
    let waited = true;
    const held = image.write(crypto.randomBytes(4096), 0).then((n) => ((waited = false), n));
    await clock.advance(WAIT_MS - 1000);
    expect(waited).toBe(true);
    await clock.advance(2000);
    await until(() => !waited);
    await expect(held).resolves.toBe(4096);
    expect(image.checkpoints?.open).toBe(false);
    expect(image.checkpoints?.abandoned).toBe(1);
    // Azure comes back: everything goes up, and no checkpoint of the abandoned fsync appears.
    faulty.heal();
    await driven(clock, h.flusher.flush([image]));
    expect(await checkpointsOf(memory)).toHaveLength(0);
    // The next fsync takes one, of the image as it is then.
    await image.write(crypto.randomBytes(512), 5 * G);
    await driven(clock, image.fsync());
    await driven(clock, h.flusher.flush([image]));
    const cps = await checkpointsOf(memory);
    expect(cps).toHaveLength(1);
    expect(cps[0]?.content.equals(memory.contentOf(disk))).toBe(true);
  } finally {
    faulty.heal();
    await h.close();
  }
});

it('keeps the newest N checkpoints, never a user snapshot, and opens one per interval', async () => {
  const { clock, memory, h, image } = await setup(3, 60_000);
  try {
    await image.write(crypto.randomBytes(4096), 0);
    await driven(clock, h.flusher.flush([image]));
    const user = await memory.createSnapshot(disk, { [SNAPSHOT_NAME_KEY]: 'before-upgrade' });
    const states: Buffer[] = [];
    for (let i = 0; i < 6; i++) {
      await image.write(crypto.randomBytes(4096), (i % GRAINS) * G + 8192);
      await driven(clock, image.fsync());
      states.push(Buffer.from(await driven(clock, image.read(0, SIZE))));
      await driven(clock, h.flusher.flush([image]));
      // A second fsync within the interval takes none.
      await image.write(crypto.randomBytes(512), 15 * G);
      await driven(clock, image.fsync());
      await driven(clock, h.flusher.flush([image]));
      await clock.advance(61_000);
    }
    const cps = await checkpointsOf(memory);
    expect(cps).toHaveLength(3);
    expect(cps.map((c) => stateOf(states, c.content))).toEqual([3, 4, 5]);
    const all = await memory.listSnapshots('c', 'disk.img');
    expect(all.filter((s) => s.snapshot === user)).toHaveLength(1);
    expect(image.checkpoints?.taken).toBe(6);
  } finally {
    await h.close();
  }
});
