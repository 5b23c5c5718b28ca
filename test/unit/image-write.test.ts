import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BlobdiskError } from '../../lib/errors';
import { StoreDecorator, type StoreOp, type Target } from '../../lib/store/decorator';
import { FaultyStore, type Fault } from '../../lib/store/faulty';
import { MeteredStore } from '../../lib/store/metered';
import { MemoryStore } from '../support/memory-store';
import { harness } from '../support/image-harness';
import { ManualClock, until } from '../support/manual-clock';
import { DEFAULT_TUNABLES, SYSTEM_TIMING } from '../../lib/tunables';

const G = 64 * 1024;
const page = { container: 'c', name: 'disk.img' };
const block = { container: 'c', name: 'data.bin' };
const id = (n: number): string => Buffer.from(String(n).padStart(8, '0')).toString('base64');

describe('Image writes and the flusher', () => {
  it('acknowledges from the cache, then uploads only the dirty sectors of a page blob', async () => {
    const store = new MemoryStore({ containers: ['c'] });
    await store.createPageBlob(page, 16 * G);
    await store.putPages(page, 0, Buffer.alloc(16 * G, 7));
    const metered = new MeteredStore(store);
    const h = harness(metered);
    const image = await h.open(page);
    const data = crypto.randomBytes(4096);
    const up = metered.counters.bytesUp;
    await image.write(data, 3 * G + 8192);
    expect(metered.counters.bytesUp).toBe(up); // nothing uploaded yet
    expect(image.counters.bytesDown).toBe(0); // and nothing fetched for an aligned write
    expect(await image.read(3 * G + 8192, 4096)).toEqual(data);
    await h.flusher.flush([image]);
    expect(metered.counters.bytesUp - up).toBe(4096);
    const expected = Buffer.alloc(16 * G, 7);
    data.copy(expected, 3 * G + 8192);
    expect(store.contentOf(page)).toEqual(expected);
    expect(image.needsUpload()).toBe(false);
    await h.close();
  });

  it('lands a sequential writer\'s writes at once, also the first one in each new grain, and uploads them all', async () => {
    const store = new MemoryStore({ containers: ['c'] });
    await store.createPageBlob(page, 0);
    const h = harness(store);
    const image = await h.open(page);
    const data = crypto.randomBytes(4 * G);
    const piece = G / 4;
    // A new grain's file is created at once; later grains are opened ahead while the last one fills.
    expect(image.writeNow(data.subarray(0, piece), 0)).toBe(piece);
    const atOnce: boolean[] = [];
    for (let at = piece; at < data.length; at += piece) {
      await h.cache.fileReady(image.id, Math.floor(at / G)); // opened ahead while the last grain filled
      const chunk = data.subarray(at, at + piece);
      const n = image.writeNow(chunk, at);
      atOnce.push(n !== undefined);
      if (n === undefined) await image.write(chunk, at);
    }
    expect(atOnce.every((x) => x)).toBe(true);
    expect(image.size).toBe(data.length);
    expect(await image.read(0, data.length)).toEqual(data);
    await h.flusher.flush([image]);
    expect(store.contentOf(page)).toEqual(data);
    await h.close();
  });

  it('a sequential writer\'s drain holds at most 4 windows: 4 Put Pages in flight, though 8 may go at once', async () => {
    const store = new MemoryStore({ containers: ['c'], latencyMs: 20 });
    await store.createPageBlob(page, 0);
    let inFlight = 0;
    let most = 0;
    class Watch extends StoreDecorator {
      protected async around<T>(op: StoreOp, _target: Target, call: () => Promise<T>): Promise<T> {
        if (op !== 'putPages') return call();
        most = Math.max(most, ++inFlight);
        try {
          return await call();
        } finally {
          inFlight--;
        }
      }
    }
    // Windows of 4 grains here, so that eight of them are 2 MiB.
    const h = harness(new Watch(store), { uploadConcurrency: 8, timing: { ...SYSTEM_TIMING, tunables: { ...DEFAULT_TUNABLES, uploadWindowBytes: 4 * G } } });
    const image = await h.open(page);
    const data = crypto.randomBytes(32 * G);
    await image.write(data, 0);
    await h.flusher.flush([image]);
    expect(store.contentOf(page)).toEqual(data);
    // Eight windows of one Put Page each; before the bound all eight went at once.
    expect(most).toBeGreaterThanOrEqual(2);
    expect(most).toBeLessThanOrEqual(4);
    expect(image.needsUpload()).toBe(false);
    await h.close();
  });

  it('turns a grain of zeros into Clear Pages, never an upload of zeros', async () => {
    const store = new MemoryStore({ containers: ['c'] });
    await store.createPageBlob(page, 4 * G);
    await store.putPages(page, 0, Buffer.alloc(4 * G, 1));
    const h = harness(store);
    const image = await h.open(page);
    await image.write(Buffer.alloc(2 * G), G);
    await h.flusher.flush([image]);
    expect(image.counters.bytesUp).toBe(0);
    expect(image.counters.bytesCleared).toBe(2 * G);
    expect(await store.pageRanges(page, 0, 4 * G)).toEqual([
      { start: 0, end: G },
      { start: 3 * G, end: 4 * G },
    ]);
    await h.close();
  });

  it('punches whole grains without writing zeros: their files hold no blocks, and Azure gets Clear Pages', async () => {
    const store = new MemoryStore({ containers: ['c'] });
    const data = crypto.randomBytes(4 * G);
    await store.createPageBlob(page, 4 * G);
    await store.putPages(page, 0, data);
    const h = harness(store);
    const image = await h.open(page);
    expect(await image.read(0, 4 * G)).toEqual(data); // grains 0 to 3 cached, whole
    // Grains 1 and 2 whole, and half of grain 3.
    await image.zero(G, 2.5 * G);
    const expected = Buffer.concat([data.subarray(0, G), Buffer.alloc(2.5 * G), data.subarray(3.5 * G)]);
    expect(await image.read(0, 4 * G)).toEqual(expected);
    for (const idx of [1, 2]) {
      const st = fs.statSync(path.join(h.dir, 'grains', String(image.id), String(idx)));
      expect({ size: st.size, blocks: st.blocks }).toEqual({ size: G, blocks: 0 });
    }
    expect(h.cache.state(image.id, 1)?.dirty).toBeTruthy();
    await h.flusher.flush([image]);
    expect(image.counters.bytesCleared).toBe(2.5 * G);
    expect(image.counters.bytesUp).toBe(0);
    expect(await store.pageRanges(page, 0, 4 * G)).toEqual([
      { start: 0, end: G },
      { start: 3.5 * G, end: 4 * G },
    ]);
    expect(store.contentOf(page)).toEqual(expected);
    await h.close();
  });

  it('keeps a grain dirty when it is written again while its upload runs', async () => {
    const store = new MemoryStore({ containers: ['c'] });
    await store.createPageBlob(page, 4 * G);
    const faulty = new FaultyStore(store);
    const h = harness(faulty);
    const image = await h.open(page);
    await image.write(Buffer.alloc(G, 1), 0);
    // The grain was read for the upload; while its Put Page is on its way, it is written again.
    const again = { ops: ['putPages'], action: { kind: 'wait', until: () => image.write(Buffer.alloc(512, 2), 0) } } as const;
    faulty.inject(again);
    await h.flusher.flush([image]);
    expect(faulty.hitsOf(again)).toBe(1);
    // The first flush has put the old bytes; the grain stays dirty with the new ones, unless a
    // later pass of the same flush already sent them: never clean with only the old bytes up.
    if (h.cache.state(image.id, 0)?.dirty === null) expect(store.contentOf(page).subarray(0, 512)).toEqual(Buffer.alloc(512, 2));
    await h.flusher.flush([image]);
    const expected = Buffer.alloc(4 * G);
    expected.fill(1, 0, G);
    expected.fill(2, 0, 512);
    expect(store.contentOf(page)).toEqual(expected);
    expect(h.cache.state(image.id, 0)?.dirty).toBeNull();
    await h.close();
  });

  it('restages only the block blob blocks that changed, whatever their foreign sizes', async () => {
    const store = new MemoryStore({ containers: ['c'] });
    const parts = [crypto.randomBytes(3 * G + 100), crypto.randomBytes(5 * G), crypto.randomBytes(G - 1)];
    await store.createBlockBlob(block);
    for (const [i, p] of parts.entries()) await store.stageBlock(block, id(i), p);
    await store.commitBlockList(block, parts.map((_, i) => id(i)));
    const h = harness(store);
    const image = await h.open(block);
    const patch = Buffer.from('hello, blocks');
    await image.write(patch, 3 * G + 1024); // inside the second block only (sectors are the unit)
    await h.flusher.flush([image]);
    const expected = Buffer.concat(parts);
    patch.copy(expected, 3 * G + 1024);
    expect(store.contentOf(block)).toEqual(expected);
    const list = await store.blockList(block);
    expect(list[0]?.id).toBe(id(0));
    expect(list[list.length - 1]?.id).toBe(id(2));
    expect(list.map((b) => b.size).reduce((a, b) => a + b, 0)).toBe(expected.length);
    expect(new Set(list.map((b) => Buffer.from(b.id, 'base64').length)).size).toBe(1); // equal id lengths
    await h.close();
  });

  it('grows and shrinks both kinds, unaligned, and regrown bytes read as zeros', async () => {
    const store = new MemoryStore({ containers: ['c'] });
    await store.createPageBlob(page, 2 * G);
    await store.putPages(page, 0, Buffer.alloc(2 * G, 5));
    await store.createBlockBlob(block);
    await store.stageBlock(block, id(1), Buffer.alloc(2 * G, 5));
    await store.commitBlockList(block, [id(1)]);
    const h = harness(store);
    for (const ref of [page, block]) {
      const image = await h.open(ref);
      await image.truncate(1000);
      await image.truncate(3 * G + 7);
      const expected = Buffer.alloc(3 * G + 7);
      expected.fill(5, 0, 1000);
      expect(await image.read(0, 4 * G)).toEqual(expected);
      await h.flusher.flush([image]);
      const info = await store.getInfo(ref);
      if (ref === page) {
        expect(info.size).toBe(3 * G + 512);
        expect(info.metadata.blobdisk_size).toBe(String(3 * G + 7));
        expect(store.contentOf(ref).subarray(0, 3 * G + 7)).toEqual(expected);
        expect(store.contentOf(ref).subarray(3 * G + 7)).toEqual(Buffer.alloc(505));
      } else {
        expect(store.contentOf(ref)).toEqual(expected);
      }
    }
    await h.close();
  });

  it('writes unaligned bytes over what the blob holds (read-modify-write of the sectors)', async () => {
    const store = new MemoryStore({ containers: ['c'] });
    const original = crypto.randomBytes(2 * G);
    await store.createBlockBlob(block);
    await store.stageBlock(block, id(1), original);
    await store.commitBlockList(block, [id(1)]);
    const h = harness(store);
    const image = await h.open(block);
    await image.write(Buffer.from('xyz'), 7);
    await image.write(Buffer.from('tail'), 2 * G); // appends past the end
    const expected = Buffer.concat([original, Buffer.from('tail')]);
    expected.write('xyz', 7);
    expect(await image.read(0, 3 * G)).toEqual(expected);
    await h.flusher.flush([image]);
    expect(store.contentOf(block)).toEqual(expected);
    await h.close();
  });

  it('fails writes with ENOSPC when the cache stays full of data Azure does not take, and loses nothing', async () => {
    const store = new MemoryStore({ containers: ['c'] });
    await store.createPageBlob(page, 16 * G);
    const faulty = new FaultyStore(store);
    const h = harness(faulty, { cacheBytes: 4 * G, dirtyWaitMs: 300, writeBackDelayMs: 10 });
    const image = await h.open(page);
    const down = faulty.inject({ ops: ['putPages'], times: Infinity, action: { kind: 'fail', error: new BlobdiskError('unavailable', 'Azure is down') } });
    for (let i = 0; i < 4; i++) await image.write(Buffer.alloc(G, i + 1), i * G);
    await expect(image.write(Buffer.alloc(G, 9), 4 * G)).rejects.toMatchObject({ kind: 'no-space' });
    down();
    await h.flusher.flush([image]);
    const content = store.contentOf(page);
    for (let i = 0; i < 4; i++) expect(content.subarray(i * G, (i + 1) * G)).toEqual(Buffer.alloc(G, i + 1));
    await image.write(Buffer.alloc(G, 9), 4 * G); // room again once uploaded
    await h.close();
  });

  it('uploads after a crash what an earlier process left dirty', async () => {
    const store = new MemoryStore({ containers: ['c'] });
    await store.createPageBlob(page, 4 * G);
    const first = harness(store);
    const image = await first.open(page);
    await image.write(Buffer.alloc(G, 3), G);
    await image.fsync();
    // The process dies here: no flush, no close of the flusher. Only files and the map remain.
    first.flusher.stop();
    first.map.close();

    const second = harness(store, { dir: first.dir });
    expect(second.map.imagesWithDirtyGrains().map((r) => r.name)).toEqual(['disk.img']);
    const again = await second.open(page);
    expect(again.conflict).toBeUndefined(); // still leased to this cache's lease id
    await second.flusher.flush([again]);
    expect(store.contentOf(page).subarray(G, 2 * G)).toEqual(Buffer.alloc(G, 3));
    await second.close();
  });

  it('a sequential writer past the blob end, then a crash: the next mount uploads exactly what was written', async () => {
    for (const ref of [page, block]) {
      const store = new MemoryStore({ containers: ['c'] });
      if (ref === page) await store.createPageBlob(ref, 0);
      else await store.commitBlockList(ref, []);
      const first = harness(store);
      const image = await first.open(ref);
      const data = crypto.randomBytes(5 * G + 300); // 16 KiB writes; the last grain ends unaligned
      for (let at = 0; at < data.length; at += 16 * 1024) await image.write(data.subarray(at, Math.min(data.length, at + 16 * 1024)), at);
      await image.fsync();
      // The process dies: nothing uploaded, only the cache files and the grain map remain.
      first.flusher.stop();
      first.map.close();

      const second = harness(store, { dir: first.dir });
      const again = await second.open(ref);
      expect(again.size).toBe(data.length);
      expect((await again.read(0, data.length)).equals(data)).toBe(true);
      await second.flusher.flush([again]);
      const azure = store.contentOf(ref);
      expect(azure.subarray(0, data.length).equals(data)).toBe(true);
      expect(azure.length).toBe(ref === page ? Math.ceil(data.length / 512) * 512 : data.length);
      expect(second.cache.dirtyGrains(again.id)).toEqual([]);
      await second.close();
    }
  });

  it('writes acknowledged while their records were only in the grain map\'s change log are uploaded after a crash', async () => {
    for (const ref of [page, block]) {
      const store = new MemoryStore({ containers: ['c'] });
      if (ref === page) await store.createPageBlob(ref, 2 * G);
      else await store.commitBlockList(ref, []);
      if (ref === page) await store.putPages(ref, 0, Buffer.alloc(2 * G, 7));
      const first = harness(store);
      const image = await first.open(ref);
      const data = crypto.randomBytes(3 * G + 1000);
      const at = ref === page ? G / 2 : 0;
      for (let o = 0; o < data.length; o += 16 * 1024) await image.write(data.subarray(o, Math.min(data.length, o + 16 * 1024)), at + o);
      // kill -9 now: the cache directory as it is, no fold of the log, no close, no fsync.
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blobdisk-crash-'));
      fs.cpSync(first.dir, dir, { recursive: true });
      expect(fs.statSync(path.join(dir, 'grainmap.db.log')).size).toBeGreaterThan(0);
      await first.close();

      const second = harness(store, { dir });
      const again = await second.open(ref);
      expect(again.size).toBe(at + data.length);
      await second.flusher.flush([again]);
      const expected = Buffer.alloc(at + data.length, ref === page ? 7 : 0);
      data.copy(expected, at);
      // Sectors never written (before `at` on the page blob) keep what Azure held.
      expect(store.contentOf(ref).subarray(0, expected.length).equals(expected)).toBe(true);
      expect(second.cache.dirtyGrains(again.id)).toEqual([]);
      await second.close();
    }
  });

  it('a write into a cached grain with its file open lands at once, recorded as dirty as any other', async () => {
    const store = new MemoryStore({ containers: ['c'] });
    await store.createPageBlob(page, 4 * G);
    await store.putPages(page, 0, Buffer.alloc(4 * G, 7));
    const h = harness(store);
    const image = await h.open(page);
    await image.write(Buffer.alloc(4096, 1), 0); // makes the grain and opens its file
    const writeNow = h.cache.writeNow.bind(h.cache);
    const landed: boolean[] = [];
    h.cache.writeNow = (...args) => {
      const done = writeNow(...args);
      landed.push(done);
      return done;
    };
    await image.write(Buffer.alloc(8192, 2), 8192);
    await image.write(Buffer.alloc(100, 3), 20_000); // not whole sectors: through the grain lock
    expect(landed).toEqual([true]);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blobdisk-crash-'));
    fs.cpSync(h.dir, dir, { recursive: true }); // kill -9 now
    await h.close();

    const second = harness(store, { dir });
    const again = await second.open(page);
    await second.flusher.flush([again]);
    const expected = Buffer.alloc(4 * G, 7);
    expected.fill(1, 0, 4096);
    expected.fill(2, 8192, 16_384);
    expected.fill(3, 20_000, 20_100);
    expect(store.contentOf(page).equals(expected)).toBe(true);
    await second.close();
  });

  it('a random writer of more cached grains than are kept open: writes into grains whose files were closed land and survive a crash', async () => {
    const store = new MemoryStore({ containers: ['c'] });
    const grains = 140; // more than the open grain files kept (maxOpenFiles)
    await store.createPageBlob(page, grains * G);
    const h = harness(store, { cacheBytes: 4 * grains * G });
    const image = await h.open(page);
    const expected = Buffer.alloc(grains * G);
    for (let i = 0; i < grains; i++) {
      await image.write(Buffer.alloc(4096, (i % 250) + 1), i * G);
      expected.fill((i % 250) + 1, i * G, i * G + 4096);
    }
    // Grain 0's file left the open files long ago: this write opens it at once.
    expect(image.writeNow(Buffer.alloc(4096, 0xab), 8192)).toBe(4096);
    expected.fill(0xab, 8192, 8192 + 4096);
    expect(await image.read(0, 3 * 4096)).toEqual(expected.subarray(0, 3 * 4096));
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blobdisk-crash-'));
    fs.cpSync(h.dir, dir, { recursive: true }); // kill -9 now
    await h.close();

    const second = harness(store, { dir, cacheBytes: 4 * grains * G });
    const again = await second.open(page);
    await second.flusher.flush([again]);
    expect(store.contentOf(page).equals(expected)).toBe(true);
    await second.close();
  });

  it('a write that grew the image but died before the new size was recorded is dropped, not uploaded forever', async () => {
    const store = new MemoryStore({ containers: ['c'] });
    await store.createPageBlob(page, 0);
    const first = harness(store);
    const image = await first.open(page);
    await image.write(Buffer.alloc(G, 1), 0);
    // The grain of the next write is recorded, then the process dies before the size is.
    const updateImage = first.map.updateImage.bind(first.map);
    first.map.updateImage = () => {
      throw new Error('killed');
    };
    await expect(image.write(Buffer.alloc(G, 2), G)).rejects.toThrow('killed');
    first.map.updateImage = updateImage;
    first.flusher.stop();
    first.map.close();

    const second = harness(store, { dir: first.dir });
    const again = await second.open(page);
    expect(again.size).toBe(G);
    await second.flusher.flush([again]);
    expect(store.contentOf(page)).toEqual(Buffer.alloc(G, 1));
    expect(second.cache.dirtyGrains(again.id)).toEqual([]);
    await second.close();
  });

  it('a Put Page failing in the middle of a long upload is retried; every byte arrives and every grain ends clean', async () => {
    const store = new MemoryStore({ containers: ['c'], latencyMs: 1 });
    await store.createPageBlob(page, 0);
    const faulty = new FaultyStore(store);
    const metered = new MeteredStore(faulty);
    const h = harness(metered);
    const image = await h.open(page);
    const data = crypto.randomBytes(300 * G + 1000); // many windows of grains
    await image.write(data, 0);
    const reset = { ops: ['putPages'], skip: 4, action: { kind: 'fail', error: new BlobdiskError('unavailable', 'connection reset') } } as const;
    faulty.inject(reset);
    await h.flusher.flush([image]);
    expect(faulty.hitsOf(reset)).toBe(1);
    expect(metered.byOp.get('putPages')).toBeGreaterThan(5);
    expect(store.contentOf(page).subarray(0, data.length).equals(data)).toBe(true);
    expect(h.cache.dirtyGrains(image.id)).toEqual([]);
    await h.close();
  });

  it('uploads once the image has been quiet for the write-back delay, or at once when half the cache is dirty', async () => {
    const clock = new ManualClock();
    const timing = { clock, tunables: DEFAULT_TUNABLES };
    const store = new MemoryStore({ containers: ['c'] });
    await store.createPageBlob(page, 64 * G);
    const metered = new MeteredStore(store);
    const h = harness(metered, { writeBackDelayMs: 300, cacheBytes: 32 * G, timing });
    const image = await h.open(page);
    for (let i = 0; i < 10; i++) {
      await image.write(crypto.randomBytes(512), i * 512);
      await clock.advance(100);
    }
    expect(metered.counters.bytesUp).toBe(0); // a writer that keeps writing is not interrupted
    await clock.advance(199); // 299 ms after the last write
    expect(metered.counters.bytesUp).toBe(0); // not quite quiet for the delay yet
    await clock.advance(1);
    await until(() => h.cache.dirtyGrains(image.id).length === 0);
    expect(metered.counters.bytesUp).toBe(5 * 1024);
    await h.close();

    const busy = new MemoryStore({ containers: ['c'] });
    await busy.createPageBlob(page, 64 * G);
    const meteredBusy = new MeteredStore(busy);
    const h2 = harness(meteredBusy, { writeBackDelayMs: 60_000, cacheBytes: 32 * G, timing });
    const image2 = await h2.open(page);
    await image2.write(crypto.randomBytes(17 * G), 0); // over half the cache
    await clock.advance(0); // no time passes: the upload starts at once
    await until(() => meteredBusy.counters.bytesUp === 17 * G);
    await h2.close();
  });

  it('a grain written after a truncate that cut into a running flush stays dirty until Azure is cut there', async () => {
    const store = new MemoryStore({ containers: ['c'] });
    const old = Buffer.alloc(8 * G, 5);
    await store.createPageBlob(page, 8 * G);
    await store.putPages(page, 0, old);
    const faulty = new FaultyStore(store);
    const h = harness(faulty);
    const image = await h.open(page);
    await image.truncate(6 * G); // the flush below cuts Azure at 6 grains
    const data = crypto.randomBytes(512);
    // While it does, a shrink into grain 2 and a write past the new end, in grain 2: the
    // flush uploads that grain, but Azure still holds the old bytes past the cut.
    const meanwhile: Fault = {
      ops: ['resizePageBlob'],
      action: {
        kind: 'wait',
        until: async () => {
          await image.truncate(2 * G + 1383);
          await image.write(data, 2 * G + 8192);
        },
      },
    };
    faulty.inject(meanwhile);
    await h.flusher.pass(image); // one pass, as the background flusher makes it
    expect(faulty.hitsOf(meanwhile)).toBe(1);
    await h.cache.dropClean(image.id); // evicted before the next pass, as from a small cache
    const expected = Buffer.alloc(2 * G + 8192 + 512);
    old.copy(expected, 0, 0, 2 * G + 1383);
    data.copy(expected, 2 * G + 8192);
    expect((await image.read(0, 8 * G)).equals(expected)).toBe(true);
    await h.flusher.flush([image]);
    expect(store.contentOf(page).subarray(0, expected.length).equals(expected)).toBe(true);
    await h.close();
  });

  it('uploads what a writer that never pauses wrote once its oldest change is old enough', async () => {
    const clock = new ManualClock();
    const store = new MemoryStore({ containers: ['c'] });
    await store.createPageBlob(page, 64 * G);
    // Quiet for 300 ms never happens below; the oldest change may wait max(5 s, 10 × 300 ms).
    const metered = new MeteredStore(store);
    const h = harness(metered, { writeBackDelayMs: 300, cacheBytes: 1024 * G, timing: { clock, tunables: DEFAULT_TUNABLES } });
    const image = await h.open(page);
    const started = clock.now();
    const before = metered.counters.requests; // writes alone ask nothing of the store
    let writes = 0;
    while (metered.counters.requests === before && clock.now() - started < 20_000) {
      await image.write(crypto.randomBytes(512), (writes++ % 1024) * 512);
      await clock.advance(50);
    }
    const waited = clock.now() - started;
    await until(() => metered.counters.bytesUp > 0);
    expect(waited).toBeGreaterThanOrEqual(5000);
    // The flusher looks again a write-back delay after the last write, at the latest.
    expect(waited).toBeLessThan(5000 + 2 * 300);
    await h.close();
  });

  it('a flush that starts while a shrink to an unaligned size reads its last sector does not take that shrink as done', async () => {
    const store = new MemoryStore({ containers: ['c'] });
    const old = Buffer.alloc(8 * G, 5);
    const ids = Array.from({ length: 8 }, (_, k) => id(k));
    for (const [k, bid] of ids.entries()) await store.stageBlock(block, bid, old.subarray(k * G, (k + 1) * G));
    await store.commitBlockList(block, ids);
    const faulty = new FaultyStore(store);
    const h = harness(faulty);
    const image = await h.open(block);
    const data = crypto.randomBytes(4096);
    await image.write(data, 0);
    // The shrink fetches the sector holding its new end. Meanwhile a background flush
    // begins, and it commits only after the shrink has finished.
    let shrunk = (): void => undefined;
    const shrinkDone = new Promise<void>((resolve) => (shrunk = resolve));
    faulty.inject({ ops: ['commitBlockList'], times: Infinity, action: { kind: 'wait', until: () => shrinkDone } });
    // The flush has taken the size it uploads once it lists the committed blocks.
    let planned = (): void => undefined;
    const planning = new Promise<void>((resolve) => (planned = resolve));
    faulty.inject({ ops: ['blockList'], action: { kind: 'wait', until: async () => planned() } });
    let pass: Promise<void> | undefined;
    faulty.inject({
      ops: ['read'],
      action: {
        kind: 'wait',
        until: async () => {
          pass = h.flusher.pass(image);
          await planning;
        },
      },
    });
    const end = 3 * G + 100;
    await image.truncate(end);
    shrunk();
    await pass;
    await image.truncate(8 * G);
    await h.flusher.flush([image]);
    const expected = Buffer.alloc(8 * G);
    old.copy(expected, 0, 0, end);
    data.copy(expected, 0);
    expect(store.contentOf(block)).toEqual(expected);
    await h.close();
  });

  it('a truncate while a flush runs does not make what that flush uploaded read as zeros once evicted', async () => {
    for (const ref of [page, block]) {
      const store = new MemoryStore({ containers: ['c'] });
      const old = Buffer.alloc(8 * G, 5);
      if (ref === page) {
        await store.createPageBlob(page, 8 * G);
        await store.putPages(page, 0, old);
      } else {
        await store.stageBlock(block, id(1), old);
        await store.commitBlockList(block, [id(1)]);
      }
      const faulty = new FaultyStore(store);
      const h = harness(faulty);
      const image = await h.open(ref);
      await image.truncate(9015); // Azure's bytes past 9015 no longer belong to the image
      await image.truncate(8 * G);
      const data = crypto.randomBytes(512);
      await image.write(data, 6 * G);
      // While the flush talks to Azure, another shrink and grow, past what was written.
      let once = true;
      const cut = async (): Promise<void> => {
        if (!once) return;
        once = false;
        await image.truncate(7 * G + 4096);
        await image.truncate(8 * G);
      };
      faulty.inject({ ops: ['resizePageBlob', 'commitBlockList'], action: { kind: 'wait', until: cut } });
      // One pass, as the background flusher makes it; the cut it leaves goes up next time.
      await h.flusher.pass(image);
      expect(once).toBe(false);
      expect(h.cache.state(image.id, 6)?.dirty).toBeNull();
      await h.cache.dropClean(image.id); // evicted before the next pass, as from a small cache
      const expected = Buffer.alloc(8 * G);
      old.copy(expected, 0, 0, 9015);
      data.copy(expected, 6 * G);
      expect((await image.read(0, 8 * G)).equals(expected)).toBe(true);
      await image.write(Buffer.alloc(512, 1), 0); // and one more flush
      expected.fill(1, 0, 512);
      await h.flusher.flush([image]);
      expect(store.contentOf(ref).subarray(0, 8 * G).equals(expected)).toBe(true);
      await h.close();
    }
  });
});
