/* Host handoff in pieces: the holder metadata's text, the handoff file's checks and grain
 * mapping, the lease's holder hook, busy message and If-Match take, and the warm-up
 * (lib/image/warm.ts) over an in-memory store: it fetches the listed grains, shares a fetch
 * with a reader, waits while readers fill the fetch budget, and stops at cache room. */

import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseMountOptions } from '../../lib/cli/options';
import { systemClock } from '../../lib/clock';
import { isBlobdiskError } from '../../lib/errors';
import { Warmer, regrain } from '../../lib/image/warm';
import { silentLogger, type Logger } from '../../lib/log';
import { HOLDER_KEY, holderText } from '../../lib/remote/holder';
import { Lease } from '../../lib/remote/lease';
import { parseHandoff } from '../../lib/namespace/handoff';
import { MeteredStore } from '../../lib/store/metered';
import { harness, type Harness } from '../support/image-harness';
import { ManualClock } from '../support/manual-clock';
import { MemoryStore } from '../support/memory-store';

const G = 64 * 1024;
const ref = { container: 'c', name: 'disk.img' };

function lines(): { log: Logger; seen: string[] } {
  const seen: string[] = [];
  const put = (m: string): void => void seen.push(m);
  return { log: { debug: put, info: put, warn: put, error: put }, seen };
}

describe('holder and handoff file', () => {
  test('the holder text names host, mountpoint and UTC second, in printable ASCII', () => {
    expect(holderText({ host: 'h1', mountpoint: '/mnt/blobs' }, new Date('2026-12-07T13:00:01.234Z'))).toBe('host=h1 mount=/mnt/blobs since=2026-12-07T13:00:01Z');
    expect(holderText({ host: 'h1', mountpoint: '/mnt/dißk' }, new Date(0))).toBe('host=h1 mount=/mnt/di?k since=1970-01-01T00:00:00Z');
  });

  test('a handoff file is checked; hot grains map onto another grain size', () => {
    const good = { blobdiskHandoff: 1, container: 'c', blob: 'd.img', etag: '"e"', size: 1024, logicalSize: 1024, grainSize: G, hot: [3, 1], at: 'now' };
    expect(parseHandoff(JSON.stringify(good), 'f').hot).toEqual([3, 1]);
    expect(() => parseHandoff('{', 'f')).toThrow('f is not JSON; give the file blobdisk handoff wrote');
    expect(() => parseHandoff(JSON.stringify({ ...good, hot: [-1] }), 'f')).toThrow('f is not a handoff file of this blobdisk version; make a new one with blobdisk handoff');
    expect(() => parseHandoff(JSON.stringify({ ...good, blobdiskHandoff: 2 }), 'f')).toThrow('not a handoff file');
    expect(regrain([3, 1, 2], G, G)).toEqual([3, 1, 2]);
    expect(regrain([3, 1, 2], G, 2 * G)).toEqual([1, 0]);
    expect(regrain([1], 2 * G, G)).toEqual([2, 3]);
  });
});

test('--warm-from takes several files, repeated or comma-separated, and refuses one it cannot read', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blobdisk-warm-'));
  const [a, b] = [path.join(dir, 'a.handoff'), path.join(dir, 'b.handoff')];
  fs.writeFileSync(a, '{}');
  fs.writeFileSync(b, '{}');
  const env = { HOME: '/home/u' };
  expect(parseMountOptions({ mountpoint: 'mnt' }, env).warmFrom).toEqual([]);
  expect(parseMountOptions({ mountpoint: 'mnt', warmFrom: [`${a},${b}`] }, env).warmFrom).toEqual([a, b]);
  expect(parseMountOptions({ mountpoint: 'mnt', warmFrom: [a, b] }, env).warmFrom).toEqual([a, b]);
  expect(() => parseMountOptions({ mountpoint: 'mnt', warmFrom: [path.join(dir, 'c.handoff')] }, env)).toThrow(`--warm-from ${path.join(dir, 'c.handoff')}: cannot read it; give the file blobdisk handoff wrote on the other host`);
  fs.rmSync(dir, { recursive: true });
});

describe('the lease and its holder', () => {
  async function setup(): Promise<{ memory: MemoryStore; etag: string }> {
    const memory = new MemoryStore({ containers: ['c'] });
    await memory.createPageBlob(ref, 4096);
    return { memory, etag: (await memory.getInfo(ref)).etag };
  }

  test('once taken, the holder hook runs with the lease id; a second host is refused, naming the holder', async () => {
    const { memory, etag } = await setup();
    const taken: string[] = [];
    const first = new Lease({ store: memory, log: silentLogger, proposedId: '00000000-0000-0000-0000-000000000001', clock: new ManualClock(), seconds: 60 }, () => ref, () => undefined, () => etag, async (id) => {
      taken.push(id);
      await memory.setMetadata(ref, { [HOLDER_KEY]: 'host=h1 mount=/m since=2026-12-07T13:00:00Z' }, { leaseId: id });
    });
    await first.take();
    await first.take();
    expect(taken).toEqual(['00000000-0000-0000-0000-000000000001']);
    const { log, seen } = lines();
    const second = new Lease({ store: memory, log, proposedId: '00000000-0000-0000-0000-000000000002', clock: new ManualClock(), seconds: 60 }, () => ref, () => undefined, () => etag);
    await expect(second.take()).rejects.toThrow('c/disk.img is leased by another writer (host=h1 mount=/m since=2026-12-07T13:00:00Z); it can only be read here');
    expect(seen).toEqual(['c/disk.img is leased by host=h1 mount=/m since=2026-12-07T13:00:00Z: opening it for writing here fails with EBUSY']);
    first.drop();
  });

  test('a failing holder hook is logged and the lease stays held', async () => {
    const { memory, etag } = await setup();
    const { log, seen } = lines();
    const lease = new Lease({ store: memory, log, proposedId: '00000000-0000-0000-0000-000000000001', clock: new ManualClock(), seconds: 60 }, () => ref, () => undefined, () => etag, (id) => memory.setMetadata(ref, {}, { leaseId: id, ifMatch: '"other"' }).then(() => undefined));
    await lease.take();
    expect(lease.state).toBe('held');
    expect(seen).toEqual(['took the lease on c/disk.img, but could not record this mount as its holder (stale)']);
    lease.drop();
  });

  test('take(ifMatch) on a blob that changed since is stale and holds nothing', async () => {
    const { memory, etag } = await setup();
    await memory.putPages(ref, 0, Buffer.alloc(512, 1));
    const lease = new Lease({ store: memory, log: silentLogger, proposedId: '00000000-0000-0000-0000-000000000001', clock: new ManualClock(), seconds: 60 }, () => ref, () => undefined, () => etag);
    const e: unknown = await lease.take(etag).catch((x: unknown) => x);
    expect(isBlobdiskError(e) && e.kind).toBe('stale');
    expect(lease.state).toBe('none');
    await lease.take((await memory.getInfo(ref)).etag);
    expect(lease.state).toBe('held');
    lease.drop();
  });
});

describe('warming an image', () => {
  let h: Harness | undefined;
  afterEach(async () => {
    await h?.close();
    h = undefined;
  });

  async function blockBlob(store: MemoryStore, grains: number): Promise<Buffer> {
    const data = crypto.randomBytes(grains * G);
    await store.putBlockBlob(ref, data);
    return data;
  }

  const deps = (x: Harness) => ({ cache: x.cache, budget: x.budget, clock: systemClock, log: silentLogger, grainSize: G });

  test('fetches the listed grains once each; reading them afterwards needs no request', async () => {
    const memory = new MemoryStore({ containers: ['c'] });
    const data = await blockBlob(memory, 16);
    const store = new MeteredStore(memory);
    h = harness(store, { readAheadGrains: 0 });
    const image = await h.open(ref);
    const w = new Warmer(deps(h), image, [9, 3, 1, 3, 40]);
    await w.ended;
    expect(w.progress).toEqual({ done: 5, total: 5, fetched: 3, state: 'done' });
    const requests = store.counters.requests;
    for (const idx of [9, 3, 1]) expect(await image.read(idx * G, G)).toEqual(data.subarray(idx * G, (idx + 1) * G));
    expect(store.counters.requests).toBe(requests);
  });

  test('a reader of a grain being warmed shares its fetch', async () => {
    const memory = new MemoryStore({ containers: ['c'] });
    const data = await blockBlob(memory, 8);
    const store = new MeteredStore(memory);
    h = harness(store, { readAheadGrains: 0 });
    const image = await h.open(ref);
    const reads = store.byOp.get('read') ?? 0;
    const w = new Warmer(deps(h), image, [5]);
    expect(await image.read(5 * G, G)).toEqual(data.subarray(5 * G, 6 * G));
    await w.ended;
    expect((store.byOp.get('read') ?? 0) - reads).toBe(1);
  });

  test('waits while readers fill the fetch budget, then goes on', async () => {
    const memory = new MemoryStore({ containers: ['c'] });
    await blockBlob(memory, 8);
    const store = new MeteredStore(memory);
    h = harness(store, { readAheadGrains: 0 });
    const image = await h.open(ref);
    const budget = h.budget;
    budget.inFlight += budget.limit;
    const reads = store.byOp.get('read') ?? 0;
    const w = new Warmer(deps(h), image, [0, 1, 2]);
    await new Promise((r) => setTimeout(r, 150));
    expect({ reads: (store.byOp.get('read') ?? 0) - reads, done: w.progress.done }).toEqual({ reads: 0, done: 0 });
    budget.inFlight -= budget.limit;
    await w.ended;
    expect(w.progress).toEqual({ done: 3, total: 3, fetched: 3, state: 'done' });
  });

  test('stops when the cache has no room left without evicting', async () => {
    const memory = new MemoryStore({ containers: ['c'] });
    await blockBlob(memory, 16);
    h = harness(memory, { readAheadGrains: 0, cacheBytes: 4 * G });
    const image = await h.open(ref);
    const w = new Warmer({ ...deps(h) }, image, [0, 1, 2, 3, 4, 5, 6, 7], 1);
    await w.ended;
    expect(w.progress).toEqual({ done: 4, total: 8, fetched: 4, state: 'stopped', reason: 'the cache is full' });
    expect(h.cache.stats.usedBytes).toBe(4 * G);
  });
});
