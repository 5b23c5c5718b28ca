/* The fast path's contract with the cache (lib/cache/native.ts), over the in-memory store
 * with the binding's table played by test/support/fake-fast.ts: reads and writes served
 * natively reach Azure; a write served natively between an upload's read and its
 * acknowledgement keeps the grain dirty; eviction never drops a grain whose native write
 * was not yet taken in; a killed process's native writes are taken in at the next open;
 * a lock or an opened checkpoint stops native service of what it holds. */

import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FAST_WRITE } from '../../lib/cache/native';
import { Image } from '../../lib/image/image';
import { FakeFastTable } from '../support/fake-fast';
import { harness, Harness } from '../support/image-harness';
import { MemoryStore } from '../support/memory-store';

const G = 64 * 1024;
const GRAINS = 8;
const disk = { container: 'c', name: 'disk.img' };
const FH = 7;

interface Setup {
  memory: MemoryStore;
  fast: FakeFastTable;
  h: Harness;
  image: Image;
  /** What the image must read as. */
  model: Buffer;
}

const opened: Harness[] = [];

async function setup(o: { cacheGrains?: number; dir?: string; memory?: MemoryStore; fast?: FakeFastTable; model?: Buffer } = {}): Promise<Setup> {
  const model = o.model ?? crypto.randomBytes(GRAINS * G);
  let memory = o.memory;
  if (!memory) {
    memory = new MemoryStore({ containers: ['c'] });
    await memory.createPageBlob(disk, GRAINS * G);
    await memory.putPages(disk, 0, model);
  }
  const fast = o.fast ?? new FakeFastTable(G);
  const h = harness(memory, { grainSize: G, cacheBytes: (o.cacheGrains ?? 64) * G, fast, ...(o.dir !== undefined ? { dir: o.dir } : {}) });
  opened.push(h);
  const image = await h.open(disk);
  fast.bind(FH, image.id);
  return { memory, fast, h, image, model };
}

afterEach(async () => {
  for (const h of opened.splice(0)) await h.close().catch(() => undefined);
});

/** Writes `data` at `offset` through JavaScript (image.write, then writeNow for the next
 *  write into the grain, which publishes it for writing), keeping `model` up to date. */
async function writeJs(s: Setup, offset: number, data: Buffer): Promise<void> {
  if (s.image.writeNow(data, offset) === undefined) await s.image.write(data, offset);
  data.copy(s.model, offset);
}

/** A kernel write served natively; fails the test when the fake would send it to JavaScript. */
function writeNative(s: Setup, offset: number, data: Buffer): void {
  expect(s.fast.write(FH, offset, data)).toBe(data.length);
  data.copy(s.model, offset);
}

/** Publishes grain `idx` for native writes the way a mount does: a write JavaScript serves at once. */
async function publishForWrites(s: Setup, idx: number): Promise<void> {
  await writeJs(s, idx * G, crypto.randomBytes(4096));
  await writeJs(s, idx * G + 4096, crypto.randomBytes(4096));
  expect(s.fast.published(s.image.id, idx, FAST_WRITE)).toBe(true);
}

it('reads and writes served natively reach Azure, and are counted as the image\'s', async () => {
  const s = await setup();
  await publishForWrites(s, 2);
  for (let i = 0; i < 20; i++) writeNative(s, 2 * G + 8192 + i * 1024, crypto.randomBytes(1024));
  // A read JavaScript serves at once publishes the grain for reading.
  const buf = Buffer.alloc(4096);
  expect(await s.image.readInto(buf, 5 * G, 4096)).toBe(4096);
  await s.image.settled(); // the fetched grain is in the cache
  expect(s.image.readNow(buf, 5 * G + 4096, 4096)).toBe(4096);
  expect(s.fast.read(FH, 5 * G + 100, 3000)).toEqual(s.model.subarray(5 * G + 100, 5 * G + 3100));
  // Grain 2 holds only what was written (its rest is not fetched): those sectors are served natively.
  expect(s.fast.read(FH, 2 * G, 28 * 1024)).toEqual(s.model.subarray(2 * G, 2 * G + 28 * 1024));
  expect(s.fast.read(FH, 2 * G, 29 * 1024)).toBeUndefined();
  const before = s.image.counters.bytesRead;
  await s.h.flusher.flush([s.image]);
  expect(s.memory.contentOf(disk).equals(s.model)).toBe(true);
  expect(s.image.counters.bytesRead).toBe(before + 3000 + 28 * 1024);
  expect(s.h.cache.native.served()).toEqual({ reads: 2, writes: 20 });
});

it('a write served natively after an upload read the grain keeps the grain dirty', async () => {
  const s = await setup();
  await publishForWrites(s, 1);
  const gen = s.h.cache.state(s.image.id, 1)?.gen ?? -1;
  const uploaded = await s.h.cache.readWhole(s.image.id, 1);
  writeNative(s, G + 32 * 1024, crypto.randomBytes(4096));
  await s.h.cache.markUploaded(s.image.id, 1, gen, uploaded);
  expect(s.h.cache.state(s.image.id, 1)?.dirty).not.toBeNull();
  await s.h.flusher.flush([s.image]);
  expect(s.memory.contentOf(disk).equals(s.model)).toBe(true);
});

it('eviction keeps a grain whose native write was not yet taken in', async () => {
  const s = await setup({ cacheGrains: 4 });
  await publishForWrites(s, 0);
  await s.h.flusher.flush([s.image]);
  expect(s.h.cache.state(s.image.id, 0)?.dirty).toBeNull();
  // Grain 0 is clean as far as JavaScript knows, and the least recently used.
  writeNative(s, 16 * 1024, crypto.randomBytes(8192));
  const buf = Buffer.alloc(G);
  for (let idx = 1; idx < GRAINS; idx++) {
    expect(await s.image.readInto(buf, idx * G, G)).toBe(G);
    expect(buf.equals(s.model.subarray(idx * G, (idx + 1) * G))).toBe(true);
  }
  expect(s.h.cache.state(s.image.id, 0)?.dirty).not.toBeNull();
  await s.h.flusher.flush([s.image]);
  expect(s.memory.contentOf(disk).equals(s.model)).toBe(true);
});

it('writes a killed process served natively are taken in at the next open', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blobdisk-native-'));
  const first = await setup({ dir });
  await publishForWrites(first, 3);
  await first.h.flusher.flush([first.image]);
  writeNative(first, 3 * G + 40 * 1024, crypto.randomBytes(4096));
  writeNative(first, 3 * G + 60 * 1024, crypto.randomBytes(512));
  // The process dies: its table's journal stays (the mapped file); nothing was taken in.
  const next = first.fast.afterKill();
  first.fast.drain = () => undefined;
  await first.h.close();
  opened.splice(opened.indexOf(first.h), 1);

  const second = await setup({ dir, memory: first.memory, fast: next, model: first.model });
  expect(second.h.cache.state(second.image.id, 3)?.dirty).not.toBeNull();
  await second.h.flusher.flush([second.image]);
  expect(second.memory.contentOf(disk).equals(second.model)).toBe(true);
  // Taken in once: the journal is empty now.
  expect(next.drain()).toBeUndefined();
});

it('a grain lock stops native service of the grain until JavaScript serves it at once again', async () => {
  const s = await setup();
  await publishForWrites(s, 4);
  // Not whole sectors: JavaScript writes it under the grain's lock.
  const odd = crypto.randomBytes(100);
  await s.image.write(odd, 4 * G + 10);
  odd.copy(s.model, 4 * G + 10);
  expect(s.fast.published(s.image.id, 4)).toBe(false);
  expect(s.fast.write(FH, 4 * G, Buffer.alloc(512))).toBeUndefined();
  await writeJs(s, 4 * G + 8192, crypto.randomBytes(4096));
  expect(s.fast.published(s.image.id, 4, FAST_WRITE)).toBe(true);
  await s.h.flusher.flush([s.image]);
  expect(s.memory.contentOf(disk).equals(s.model)).toBe(true);
});

it('a sequential reader\'s read-ahead publishes the cached grains ahead of it, so the kernel\'s next requests of them are served natively', async () => {
  // Every grain cached and clean, in a second process: nothing is published yet.
  const first = await setup();
  const buf = Buffer.alloc(GRAINS * G);
  expect(await first.image.readInto(buf, 0, GRAINS * G)).toBe(GRAINS * G);
  await first.image.settled();
  const dir = first.h.dir;
  await first.h.close();
  opened.splice(opened.indexOf(first.h), 1);
  const s = await setup({ dir, memory: first.memory, model: first.model });
  for (let idx = 0; idx < GRAINS; idx++) expect(s.fast.published(s.image.id, idx)).toBe(false);

  // A sequential reader of grains 0 and 1 (served by JavaScript).
  for (let at = 0; at < 2 * G; at += G / 2) {
    const part = Buffer.alloc(G / 2);
    expect(await s.image.readInto(part, at, part.length)).toBe(part.length);
    expect(part.equals(s.model.subarray(at, at + part.length))).toBe(true);
  }
  // The grains its read-ahead got ready are published as soon as they are checked and open.
  const deadline = Date.now() + 5_000;
  while (!s.fast.published(s.image.id, 3) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  expect(s.fast.published(s.image.id, 2)).toBe(true);
  expect(s.fast.published(s.image.id, 3)).toBe(true);
  expect(s.fast.read(FH, 2 * G, 2 * G)).toEqual(s.model.subarray(2 * G, 4 * G));
  expect(s.h.cache.native.served().reads).toBe(1);
});
