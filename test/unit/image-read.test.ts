import crypto from 'node:crypto';
import { BlobdiskError } from '../../lib/errors';
import { FaultyStore } from '../../lib/store/faulty';
import { MeteredStore } from '../../lib/store/metered';
import { MemoryStore } from '../support/memory-store';
import { harness } from '../support/image-harness';
import { ManualClock } from '../support/manual-clock';
import { DEFAULT_TUNABLES } from '../../lib/tunables';
import { BufferPool } from '../../lib/image/pool';

const G = 64 * 1024;
const ref = { container: 'c', name: 'disk.img' };

async function pageBlob(store: MemoryStore, size: number, writes: Array<[number, Buffer]>): Promise<void> {
  await store.createPageBlob(ref, size);
  for (const [at, data] of writes) await store.putPages(ref, at, data);
}

describe('Image reads', () => {
  it('returns the blob bytes exactly, zeros where no page is, with no request for empty grains', async () => {
    const store = new MemoryStore({ containers: ['c'] });
    const a = crypto.randomBytes(3 * G);
    await pageBlob(store, 64 * G, [[5 * G, a]]);
    const metered = new MeteredStore(store);
    const h = harness(metered);
    const image = await h.open(ref);
    const before = metered.counters.requests;
    expect(await image.read(20 * G, G)).toEqual(Buffer.alloc(G));
    expect(image.counters.zeroReads).toBe(1);
    expect(image.counters.fetches).toBe(0);
    expect(metered.counters.bytesDown).toBe(0);
    expect(metered.counters.requests - before).toBe(1); // the page ranges of the window, once
    expect(await image.read(5 * G - 100, 3 * G + 200)).toEqual(Buffer.concat([Buffer.alloc(100), a, Buffer.alloc(100)]));
    expect(await image.read(64 * G - 10, 100)).toHaveLength(10);
    expect(await image.read(64 * G, 100)).toHaveLength(0);
    await h.close();
  });

  it('serves a hit from the cache without any request, also in a later process', async () => {
    const store = new MemoryStore({ containers: ['c'] });
    const data = crypto.randomBytes(8 * G);
    await store.createBlockBlob(ref);
    await store.stageBlock(ref, Buffer.from('a').toString('base64'), data);
    await store.commitBlockList(ref, [Buffer.from('a').toString('base64')]);
    const first = harness(store);
    const image = await first.open(ref);
    expect(await image.read(0, 8 * G)).toEqual(data);
    await first.close();

    const metered = new MeteredStore(store);
    const second = harness(metered, { dir: first.dir });
    const again = await second.open(ref);
    const requests = metered.counters.requests;
    expect(await again.read(G + 7, 5 * G)).toEqual(data.subarray(G + 7, 6 * G + 7));
    expect(metered.counters.requests).toBe(requests);
    expect(again.counters.hits).toBeGreaterThan(0);
    expect(again.counters.fetches).toBe(0);
    await second.close();
  });

  it('checksums a fetched grain as its chunks arrive, zero ends included: a later process finds it intact', async () => {
    // Chunks that do not line up with grains or sectors; pages that start and end inside grains.
    const store = new MemoryStore({ containers: ['c'], chunkSize: 3000 });
    const a = crypto.randomBytes(2 * G + 1024);
    const b = crypto.randomBytes(1536);
    await pageBlob(store, 8 * G, [[G + 1024, a], [6 * G + 512, b]]);
    const first = harness(store);
    const want = Buffer.alloc(8 * G);
    a.copy(want, G + 1024);
    b.copy(want, 6 * G + 512);
    expect(await (await first.open(ref)).read(0, 8 * G)).toEqual(want);
    await first.close();

    const metered = new MeteredStore(store);
    const second = harness(metered, { dir: first.dir });
    const again = await second.open(ref);
    const down = metered.counters.bytesDown;
    expect(await again.read(0, 8 * G)).toEqual(want);
    expect(second.cache.stats.corruptions).toBe(0);
    expect(again.counters.fetches).toBe(0);
    expect(metered.counters.bytesDown).toBe(down); // only the empty grains' page ranges are asked for
    await second.close();
  });

  it('answers random reads of checked cached grains, and of ranges known empty, at once (readNow); unchecked grains wait for read()', async () => {
    const store = new MemoryStore({ containers: ['c'] });
    const a = crypto.randomBytes(4 * G);
    await pageBlob(store, 64 * G, [[8 * G, a]]);
    const first = harness(store, { readAheadGrains: 0 });
    const image = await first.open(ref);
    const out = Buffer.alloc(4096, 0xee);
    // Nothing cached, page ranges not listed yet: it needs read().
    expect(image.readNow(out, 9 * G + 100, 4096)).toBeUndefined();
    expect(await image.read(8 * G, 4 * G)).toEqual(a);
    await image.settled(); // the fetched grains are in the cache
    // A grain fetched in this process is checked: a random 4 KiB read is answered at once.
    expect(image.readNow(out, 9 * G + 100, 4096)).toBe(4096);
    expect(out).toEqual(a.subarray(G + 100, G + 100 + 4096));
    // The window's page ranges are listed now: a grain with no pages reads as zeros at once.
    expect(image.readNow(out, 20 * G + 512, 4096)).toBe(4096);
    expect(out).toEqual(Buffer.alloc(4096));
    await first.close();

    // A later process must check a clean grain's checksum before serving it at once.
    const second = harness(store, { dir: first.dir, readAheadGrains: 0 });
    const again = await second.open(ref);
    expect(again.readNow(out, 9 * G + 100, 4096)).toBeUndefined();
    expect(await again.read(9 * G, G)).toEqual(a.subarray(G, 2 * G));
    expect(again.readNow(out, 9 * G + 100, 4096)).toBe(4096);
    expect(out).toEqual(a.subarray(G + 100, G + 100 + 4096));
    await second.close();
  });

  it('drops cached grains when the blob changed elsewhere', async () => {
    const store = new MemoryStore({ containers: ['c'] });
    await pageBlob(store, 4 * G, [[0, Buffer.alloc(4 * G, 1)]]);
    const first = harness(store);
    expect((await (await first.open(ref)).read(0, 10))[0]).toBe(1);
    await first.close();
    await store.putPages(ref, 0, Buffer.alloc(G, 2));
    const second = harness(store, { dir: first.dir });
    const image = await second.open(ref);
    expect((await image.read(0, 10))[0]).toBe(2);
    expect(image.counters.fetches).toBe(1);
    await second.close();
  });

  it('shares one fetch between concurrent readers of a grain and releases each as its bytes arrive', async () => {
    const store = new MemoryStore({ containers: ['c'] });
    const data = crypto.randomBytes(G);
    await pageBlob(store, G, [[0, data]]);
    const h = harness(store);
    const image = await h.open(ref);
    store.settings.chunkSize = G / 16;
    store.settings.chunkDelayMs = 40;
    const started = Date.now();
    const early = image.read(0, 512).then((b) => ({ b, at: Date.now() - started }));
    const late = image.read(G - 512, 512).then((b) => ({ b, at: Date.now() - started }));
    const [e, l] = await Promise.all([early, late]);
    expect(e.b).toEqual(data.subarray(0, 512));
    expect(l.b).toEqual(data.subarray(G - 512));
    expect(image.counters.fetches).toBe(1);
    // The first bytes came with the first chunk, long before the last chunk.
    expect(e.at).toBeLessThan(l.at - 200);
    await h.close();
  });

  it('stores each grain of a GET as soon as its last byte arrived, while the GET streams on', async () => {
    const store = new MemoryStore({ containers: ['c'] });
    const data = crypto.randomBytes(4 * G);
    // Zeros (no pages) up to grain 8, then grains 8 to 11 written.
    await pageBlob(store, 12 * G, [[8 * G, data]]);
    const h = harness(store, { readAheadGrains: 4 });
    const image = await h.open(ref);
    const id = image.id;
    store.settings.chunkSize = G / 4;
    store.settings.chunkDelayMs = 15;
    // A sequential reader of the zeros: its read-ahead window reaches grains 8 to 11, one GET of 16 chunks.
    for (let at = 0; at < 8 * G; at += G / 2) expect(await image.read(at, G / 2)).toEqual(Buffer.alloc(G / 2));
    const seen: boolean[] = [];
    const until = Date.now() + 10_000;
    while (!h.cache.has(id, 11) && Date.now() < until) {
      if (h.cache.has(id, 8)) seen.push(h.cache.has(id, 10));
      await new Promise((r) => setTimeout(r, 5));
    }
    expect(image.counters.readAheadFetches).toBe(1);
    // Grain 8 was in the cache while grain 10 was still on its way.
    expect(seen).toContain(false);
    // A buffer is taken per grain as its bytes arrive and given back once it is stored.
    expect(h.budget.buffers.idleCount).toBeGreaterThan(0);
    expect(h.budget.buffers.idleCount).toBeLessThanOrEqual(2);
    expect(await image.read(8 * G, 4 * G)).toEqual(data);
    expect(image.counters.fetches).toBe(1);
    await h.close();
  });

  it('a direct body is pulled into the grains\' buffers: a reader is released as its bytes arrive, and each grain is stored as it completes', async () => {
    const store = new MemoryStore({ containers: ['c'], direct: true });
    const data = crypto.randomBytes(4 * G);
    await pageBlob(store, 4 * G, [[0, data]]);
    const metered = new MeteredStore(store);
    const h = harness(metered);
    const image = await h.open(ref);
    store.settings.chunkSize = G / 4;
    store.settings.chunkDelayMs = 15;
    const all = image.read(0, 4 * G);
    // Grain 1's first piece releases its reader while the rest of grain 1 is on its way.
    expect(await image.read(G, 4096)).toEqual(data.subarray(G, G + 4096));
    expect(h.cache.has(image.id, 1)).toBe(false);
    expect(await all).toEqual(data);
    await image.settled();
    expect(metered.counters.bytesDown).toBe(4 * G);
    expect(store.directPulls).toBeGreaterThanOrEqual(4);
    for (let g = 0; g < 4; g++) expect(h.cache.has(image.id, g)).toBe(true);
    await h.close();
    // Each grain went into the cache whole, with its checksum: a later process finds it intact.
    const second = harness(store, { dir: h.dir });
    const again = await second.open(ref);
    expect(await again.read(0, 4 * G)).toEqual(data);
    expect(second.cache.stats.corruptions).toBe(0);
    expect(again.counters.fetches).toBe(0);
    await second.close();
  });

  it('reads ahead of a sequential reader, in GETs covering several grains', async () => {
    const store = new MemoryStore({ containers: ['c'] });
    const data = crypto.randomBytes(32 * G);
    await pageBlob(store, 32 * G, [[0, data]]);
    const h = harness(store, { readAheadGrains: 8 });
    const image = await h.open(ref);
    const out: Buffer[] = [];
    for (let at = 0; at < 32 * G; at += G / 2) out.push(await image.read(at, G / 2));
    expect(Buffer.concat(out)).toEqual(data);
    expect(image.counters.readAheadFetches).toBeGreaterThan(0);
    expect(image.counters.fetches).toBeLessThan(32); // grains were fetched together
    await h.close();
  });

  it('fails a read with the store error; a quick failure (a reset) is fetched again at once', async () => {
    const store = new MemoryStore({ containers: ['c'] });
    await pageBlob(store, G, [[0, Buffer.alloc(G, 9)]]);
    const faulty = new FaultyStore(store);
    const h = harness(faulty);
    const image = await h.open(ref);
    faulty.inject({ ops: ['read'], action: { kind: 'fail', error: new BlobdiskError('unavailable', 'the connection was reset') } });
    await expect(image.read(0, 10)).rejects.toMatchObject({ kind: 'unavailable' });
    expect((await image.read(0, 10))[0]).toBe(9);
    await h.close();
  });

  it('a fetch that failed after Azure kept silent fails again at once for failFastMs, then fetches again', async () => {
    const store = new MemoryStore({ containers: ['c'] });
    await pageBlob(store, G, [[0, Buffer.alloc(G, 9)]]);
    const faulty = new FaultyStore(store);
    const clock = new ManualClock();
    // silentAfterMs 0: here every failure counts as Azure keeping silent.
    const h = harness(faulty, { timing: { clock, tunables: { ...DEFAULT_TUNABLES, silentAfterMs: 0 } } });
    const image = await h.open(ref);
    const fault = { ops: ['read'], action: { kind: 'fail', error: new BlobdiskError('unavailable', 'Azure did not answer in time') } } as const;
    faulty.inject(fault);
    await expect(image.read(0, 10)).rejects.toMatchObject({ kind: 'unavailable' });
    // The kernel reads a page again at once when its read-ahead failed: that fails without asking Azure.
    await expect(image.read(0, 10)).rejects.toMatchObject({ kind: 'unavailable' });
    expect(faulty.hitsOf(fault)).toBe(1);
    await clock.advance(DEFAULT_TUNABLES.failFastMs);
    expect((await image.read(0, 10))[0]).toBe(9);
    await h.close();
  });

  it('a page-range listing that raced with an upload of ours is not trusted: an uploaded grain evicted mid-flush reads back', async () => {
    const store = new MemoryStore({ containers: ['c'], latencyMs: 10 });
    await store.createPageBlob(ref, 512 * G);
    const h = harness(store, { readAheadGrains: 0, cacheBytes: 1024 * G });
    const image = await h.open(ref);
    await image.remote.takeLease();
    // Every other grain: one Put Page each, more than one flush window of them.
    const data = new Map<number, Buffer>();
    for (let idx = 0; idx < 400; idx += 2) {
      data.set(idx, crypto.randomBytes(G));
      await image.write(data.get(idx) as Buffer, idx * G);
    }
    // The page ranges around grain 1 are listed while the first uploads are in flight.
    const listing = image.read(G + 5, 100);
    const flushing = h.flusher.flush([image]);
    expect(await listing).toEqual(Buffer.alloc(100));
    // Once grain 0 went up and is clean, it leaves the cache while the flush goes on.
    while (h.cache.dirtyGrains(image.id).includes(0)) await new Promise((r) => setTimeout(r, 5));
    expect(h.cache.dirtyGrains(image.id).length).toBeGreaterThan(0);
    await h.cache.dropClean(image.id);
    expect((await image.read(0, G)).equals(data.get(0) as Buffer)).toBe(true);
    await flushing;
    await h.close();
  });
});

describe('BufferPool', () => {
  afterEach(() => jest.useRealTimers());

  it('reuses given buffers up to its bound and lets the idle ones go once no fetch took one for 5 s', () => {
    jest.useFakeTimers();
    const pool = new BufferPool(1024, 2);
    const [a, b, c] = [pool.take(), pool.take(), pool.take()];
    for (const buf of [a, b, c]) pool.give(buf);
    expect(pool.idleCount).toBe(2);
    expect([a, b]).toContain(pool.take());
    pool.give(Buffer.alloc(512)); // not of the pool's size
    expect(pool.idleCount).toBe(1);
    jest.advanceTimersByTime(4_000);
    pool.take(); // a fetch took one: the idle ones stay 5 s more
    pool.give(a);
    jest.advanceTimersByTime(4_000);
    expect(pool.idleCount).toBe(1);
    jest.advanceTimersByTime(1_500);
    expect(pool.idleCount).toBe(0);
  });
});
