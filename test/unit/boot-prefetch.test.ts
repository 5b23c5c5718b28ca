/* Boot-time prefetch (lib/image/boot.ts) over an in-memory store: an image remembers the
 * grains read in the first minute after its first read, in order, not those read later;
 * a mount whose cache holds nothing of the image warms them at its next first read; one
 * that holds some of it is not warmed. Time moves by a ManualClock. */

import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BOOT_WINDOW_MS, bootFile, parseBootGrains } from '../../lib/image/boot';
import { MeteredStore } from '../../lib/store/metered';
import { DEFAULT_TUNABLES } from '../../lib/tunables';
import { harness, type Harness } from '../support/image-harness';
import { ManualClock } from '../support/manual-clock';
import { MemoryStore } from '../support/memory-store';

const G = 64 * 1024;
const ref = { container: 'c', name: 'disk.img' };
const open: Harness[] = [];

afterEach(async () => {
  for (const h of open.splice(0)) await h.close();
});

async function blockBlob(store: MemoryStore, grains: number): Promise<Buffer> {
  const data = crypto.randomBytes(grains * G);
  await store.putBlockBlob(ref, data);
  return data;
}

function mounted(store: MeteredStore | MemoryStore, clock: ManualClock, dir?: string): Harness {
  const h = harness(store, { readAheadGrains: 0, bootPrefetch: true, timing: { clock, tunables: DEFAULT_TUNABLES }, ...(dir !== undefined ? { dir } : {}) });
  open.push(h);
  return h;
}

async function until(check: () => boolean, clock: ManualClock, rounds = 500): Promise<void> {
  for (let i = 0; i < rounds && !check(); i++) {
    await clock.advance(20);
    await new Promise((r) => setTimeout(r, 2));
  }
}

test('the first minute of reads is remembered in order; a cold cache warms those grains at the next first read', async () => {
  const memory = new MemoryStore({ containers: ['c'] });
  const data = await blockBlob(memory, 16);
  const clock = new ManualClock();
  const first = mounted(memory, clock);
  const image = await first.open(ref);
  await image.read(7 * G, G);
  await image.read(2 * G + 100, G); // grains 2 and 3
  await clock.advance(BOOT_WINDOW_MS);
  await image.read(12 * G, G); // after the minute: not remembered
  await first.close();
  const file = bootFile(path.join(first.dir, 'boot'), 'acct', ref);
  expect(parseBootGrains(fs.readFileSync(file, 'utf8'), G)).toEqual([7, 2, 3]);
  expect(parseBootGrains(fs.readFileSync(file, 'utf8'), 2 * G)).toEqual([3, 1]);
  expect(fs.statSync(file).mode & 0o777).toBe(0o600);

  // Another cache directory holding the file only: the first read warms 7, 2, 3.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blobdisk-boot-'));
  fs.mkdirSync(path.join(dir, 'boot'));
  fs.copyFileSync(file, bootFile(path.join(dir, 'boot'), 'acct', ref));
  const metered = new MeteredStore(memory);
  const second = mounted(metered, clock, dir);
  const again = await second.open(ref);
  expect(again.bootPrefetch).toBeUndefined();
  expect(await again.read(0, 100)).toEqual(data.subarray(0, 100));
  await until(() => again.bootPrefetch?.state === 'done', clock);
  expect(again.bootPrefetch).toEqual({ done: 3, total: 3, fetched: 3, state: 'done' });
  const requests = metered.counters.requests;
  for (const idx of [7, 2, 3]) expect(await again.read(idx * G, G)).toEqual(data.subarray(idx * G, (idx + 1) * G));
  expect(metered.counters.requests).toBe(requests);
});

test('a cache that holds some of the image is not warmed: no request beyond the reads', async () => {
  const memory = new MemoryStore({ containers: ['c'] });
  await blockBlob(memory, 8);
  const clock = new ManualClock();
  const first = mounted(memory, clock);
  const image = await first.open(ref);
  await image.read(0, 4 * G);
  await first.close();
  const metered = new MeteredStore(memory);
  const second = mounted(metered, clock, first.dir);
  const again = await second.open(ref);
  const requests = metered.counters.requests;
  await again.read(0, G);
  await until(() => false, clock, 20);
  expect(again.bootPrefetch).toBeUndefined();
  expect(metered.counters.requests).toBe(requests);
});

test('a boot file that is not one is ignored', () => {
  expect(parseBootGrains('{', G)).toEqual([]);
  expect(parseBootGrains(JSON.stringify({ grains: [1, 2] }), G)).toEqual([]);
  expect(parseBootGrains(JSON.stringify({ grainSize: G, grains: [1, -2, 'x', 3] }), G)).toEqual([1, 3]);
});
