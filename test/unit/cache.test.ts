import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { GrainCache } from '../../lib/cache/cache';
import { GrainMap } from '../../lib/grainmap/grainmap';
import { silentLogger } from '../../lib/log';

const G = 64 * 1024;

function setup(sizeGrains: number, dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blobdisk-cache-'))) {
  const map = GrainMap.open(path.join(dir, 'grainmap.db'), G);
  const cache = new GrainCache({ dir, sizeBytes: sizeGrains * G, grainSize: G }, map, silentLogger);
  const image = map.ensureImage('acct', 'c', 'disk.img', 'page', 100 * G).id;
  return { dir, map, cache, image };
}

const grain = (fill: number): Buffer => Buffer.alloc(G, fill);

/** Overwrites a few bytes in the middle of a grain's file, as a crash or a bad disk might; returns the file. */
function tear(dir: string, image: number, idx: number): string {
  const file = path.join(dir, 'grains', String(image), String(idx));
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, Buffer.from('torn'), 0, 4, 1000);
  fs.closeSync(fd);
  return file;
}

async function readBack(cache: GrainCache, image: number, idx: number): Promise<Buffer | undefined> {
  const out = Buffer.alloc(G);
  return (await cache.read(image, idx, 0, G, out, 0)) ? out : undefined;
}

describe('GrainCache', () => {
  it('stores grains and reads any part of them back', async () => {
    const { cache, image, map } = setup(8);
    await cache.fill(image, 2, grain(7));
    const part = Buffer.alloc(10);
    expect(await cache.read(image, 2, 100, 10, part, 0)).toBe(true);
    expect(part).toEqual(Buffer.alloc(10, 7));
    expect(await cache.read(image, 3, 0, 10, part, 0)).toBe(false);
    expect(cache.stats).toMatchObject({ usedBytes: G, grains: 1 });
    await cache.close();
    map.close();
  });

  it('never evicts a clean grain while a write into it is landing', async () => {
    const { cache, image, map } = setup(2);
    await cache.write(image, 0, 0, grain(1), 0); // dirty: stays
    await cache.fill(image, 1, grain(2)); // clean, its file not open
    // The write into grain 1 waits for its file to open while a write into grain 2 needs
    // room: grain 1, still clean, must not be the one that goes.
    const into1 = cache.write(image, 1, 0, Buffer.alloc(4096, 3), 0);
    const into2 = cache.write(image, 2, 0, grain(4), 50);
    await into1;
    await expect(into2).rejects.toThrow(/ENOSPC|full/);
    expect(cache.state(image, 1)?.dirty).not.toBeNull();
    const expected = grain(2);
    expected.fill(3, 0, 4096);
    expect(await readBack(cache, image, 1)).toEqual(expected);
    expect(map.grainsOf(image).map((g) => g.idx)).toEqual([0, 1]);
    await cache.close();
    map.close();
  });

  it('evicts the least recently used clean grains to stay within its size', async () => {
    const { cache, image, map } = setup(4);
    for (let i = 0; i < 4; i++) await cache.fill(image, i, grain(i));
    await readBack(cache, image, 0); // 0 becomes the most recently used
    await cache.fill(image, 4, grain(4));
    expect(cache.has(image, 1)).toBe(false);
    expect([0, 2, 3, 4].every((i) => cache.has(image, i))).toBe(true);
    expect(cache.stats.usedBytes).toBe(4 * G);
    expect(cache.stats.evictions).toBe(1);
    expect(map.grainsOf(image).map((g) => g.idx)).toEqual([0, 2, 3, 4]);
    await cache.close();
    map.close();
  });

  it('serves grains cached by an earlier process and checks them first', async () => {
    const first = setup(8);
    await first.cache.fill(first.image, 0, grain(1));
    await first.cache.fill(first.image, 1, grain(2));
    await first.cache.close();
    first.map.close();

    // Damage grain 1 on disk, as a crash or a bad disk might.
    const file = tear(first.dir, first.image, 1);

    const again = setup(8, first.dir);
    expect(again.image).toBe(first.image);
    expect(await readBack(again.cache, again.image, 0)).toEqual(grain(1));
    expect(await readBack(again.cache, again.image, 1)).toBeUndefined();
    expect(again.cache.has(again.image, 1)).toBe(false);
    expect(again.cache.stats.corruptions).toBe(1);
    expect(fs.existsSync(file)).toBe(false);
    await again.cache.close();
    again.map.close();
  });

  it('never serves a grain made anew from the file prefetch() opened for the old one', async () => {
    const { cache, image, map } = setup(8);
    await cache.fill(image, 0, grain(1));
    expect(await cache.prefetch(image, 0)).toBe(true);
    const out = Buffer.alloc(10);
    expect(cache.readNow(image, 0, 0, 10, out, 0)).toBe(true);
    expect(out).toEqual(Buffer.alloc(10, 1));
    // The blob changed: the grain is dropped, its file removed, then fetched again.
    expect(await cache.dropClean(image)).toBe(1);
    expect(cache.readNow(image, 0, 0, 10, out, 0)).toBe(false);
    await cache.fill(image, 0, grain(2));
    // Not prefetched since: readNow() opens the new file, never reads the old descriptor.
    expect(cache.readNow(image, 0, 0, 10, out, 0)).toBe(true);
    expect(out).toEqual(Buffer.alloc(10, 2));
    expect(await cache.prefetch(image, 0)).toBe(true);
    out.fill(0);
    expect(cache.readNow(image, 0, 0, 10, out, 0)).toBe(true);
    expect(out).toEqual(Buffer.alloc(10, 2));
    await cache.close();
    map.close();
  });

  it('serves a checked grain synchronously, and checks its checksum first on its first read in a process', async () => {
    const first = setup(8);
    await first.cache.fill(first.image, 0, grain(1));
    const out = Buffer.alloc(100, 0xff);
    // Fetched in this process, so checked: served at once, its file opened for it.
    expect(first.cache.readNow(first.image, 0, 10, 50, out, 25)).toBe(true);
    expect(out).toEqual(Buffer.concat([Buffer.alloc(25, 0xff), Buffer.alloc(50, 1), Buffer.alloc(25, 0xff)]));
    out.fill(0xff);
    expect(await first.cache.prefetch(first.image, 0)).toBe(true);
    expect(first.cache.readNow(first.image, 0, 10, 50, out, 25)).toBe(true);
    expect(out).toEqual(Buffer.concat([Buffer.alloc(25, 0xff), Buffer.alloc(50, 1), Buffer.alloc(25, 0xff)]));
    await first.cache.write(first.image, 0, 512, Buffer.alloc(512, 9), 0);
    expect(first.cache.readNow(first.image, 0, 600, 30, out, 0)).toBe(true); // what was just written
    expect(out.subarray(0, 30)).toEqual(Buffer.alloc(30, 9));
    expect(await first.cache.prefetch(first.image, 5)).toBe(false);
    await first.cache.fill(first.image, 1, grain(2));
    await first.cache.close();
    first.map.close();

    // A later process: grain 1 is torn on disk and must be checked before anything serves it.
    const file = tear(first.dir, first.image, 1);
    const again = setup(8, first.dir);
    expect(again.cache.checked(again.image, 1)).toBe(false);
    expect(again.cache.readNow(again.image, 1, 0, 10, out, 0)).toBe(false);
    expect(await again.cache.prefetch(again.image, 1)).toBe(false);
    expect(again.cache.has(again.image, 1)).toBe(false);
    expect(again.cache.stats.corruptions).toBe(1);
    expect(fs.existsSync(file)).toBe(false);
    expect(await readBack(again.cache, again.image, 1)).toBeUndefined();
    // Grain 0 (dirty) needs no check; a clean grain is served once read() checked it.
    expect(again.cache.checked(again.image, 0)).toBe(true);
    await again.cache.fill(again.image, 2, grain(3));
    await again.cache.close();
    again.map.close();
    const third = setup(8, first.dir);
    expect(third.cache.readNow(third.image, 2, G - 10, 10, out, 0)).toBe(false);
    expect(await third.cache.prefetch(third.image, 2)).toBe(true);
    expect(third.cache.checked(third.image, 2)).toBe(true);
    expect(third.cache.readNow(third.image, 2, G - 10, 10, out, 0)).toBe(true);
    expect(out.subarray(0, 10)).toEqual(Buffer.alloc(10, 3));
    // A grain file shorter than a grain (its tail never written) is checked with zeros there.
    await third.cache.write(third.image, 3, 0, Buffer.alloc(G / 2, 4), 0);
    third.cache.markUploaded(third.image, 3, third.cache.state(third.image, 3)?.gen ?? -1, Buffer.concat([Buffer.alloc(G / 2, 4), Buffer.alloc(G / 2)]));
    await third.cache.close();
    third.map.close();
    const fourth = setup(8, first.dir);
    expect(fourth.cache.checked(fourth.image, 3)).toBe(false);
    expect(await fourth.cache.prefetch(fourth.image, 3)).toBe(true);
    expect(fourth.cache.readNow(fourth.image, 3, G / 2 - 5, 10, out, 0)).toBe(true);
    expect(out.subarray(0, 10)).toEqual(Buffer.concat([Buffer.alloc(5, 4), Buffer.alloc(5)]));
    expect(fourth.cache.stats.corruptions).toBe(0);
    await fourth.cache.close();
    fourth.map.close();
  });

  it('lands a write at once in a grain not cached (its file created) or opened ahead, and removes unused files at close', async () => {
    const { cache, image, map, dir } = setup(3);
    const fileOf = (idx: number): string => path.join(dir, 'grains', String(image), String(idx));
    const data = Buffer.alloc(4096, 9);
    // A grain not cached, with room to spare: its file is created at once.
    expect(cache.writeNow(image, 4, 512, data)).toBe(true);
    expect(cache.covers(image, 4, 512, 4608)).toBe(true);
    expect(cache.covers(image, 4, 0, 512)).toBe(false);
    expect(fs.existsSync(fileOf(4))).toBe(true);
    await cache.write(image, 4, 512, Buffer.alloc(4096), 0); // the next check below wants it gone again
    await cache.truncate(image, 4 * G);
    expect(cache.has(image, 4)).toBe(false);
    cache.prepare(image, 1);
    cache.prepare(image, 2);
    await Promise.all([cache.fileReady(image, 1), cache.fileReady(image, 2)]); // the files open in the thread pool
    expect(cache.has(image, 1)).toBe(false); // prepared is not cached
    expect(cache.writeNow(image, 1, 0, data)).toBe(true);
    expect(cache.state(image, 1)?.dirty).not.toBeNull();
    expect(cache.covers(image, 1, 0, 4096)).toBe(true);
    expect(cache.covers(image, 1, 0, 4608)).toBe(false);
    const back = Buffer.alloc(4096);
    expect(await cache.read(image, 1, 0, 4096, back, 0)).toBe(true);
    expect(back).toEqual(data);
    expect(map.grainsOf(image).map((g) => g.idx)).toEqual([1]);
    // Without room to spare a prepared grain is left to write(), which may evict or wait.
    await cache.write(image, 0, 0, data, 0);
    await cache.write(image, 3, 0, data, 0);
    expect(cache.writeNow(image, 2, 0, data)).toBe(false);
    expect(cache.has(image, 2)).toBe(false);
    expect(cache.writeNow(image, 5, 0, data)).toBe(false); // nor is a new file created then
    await cache.close();
    expect(fs.existsSync(fileOf(1))).toBe(true);
    expect(fs.existsSync(fileOf(2))).toBe(false);
    map.close();
  });

  it('keeps at most its bound of grain files open under writes all over an image', async () => {
    const { cache, image, map } = setup(1200);
    const openFds = (): number => fs.readdirSync('/proc/self/fd').length;
    const before = openFds();
    const data = Buffer.alloc(4096, 5);
    // A random writer opens a file for nearly every write; closed files must not pile up.
    for (let idx = 0; idx < 1000; idx++) await cache.write(image, idx, 0, data, 0);
    await cache.filesClosed(); // closes finish in the thread pool
    expect(openFds() - before).toBeLessThanOrEqual(128 + 8);
    const back = Buffer.alloc(4096);
    for (const idx of [0, 499, 999]) {
      expect(await cache.read(image, idx, 0, 4096, back, 0)).toBe(true);
      expect(back).toEqual(data);
    }
    await cache.close();
    map.close();
  });

  it('drops the clean grains of one image only', async () => {
    const { cache, image, map } = setup(8);
    const other = map.ensureImage('acct', 'c', 'other.img', 'page', 10 * G).id;
    await cache.fill(image, 0, grain(1));
    await cache.fill(other, 0, grain(2));
    expect(await cache.dropClean(image)).toBe(1);
    expect(cache.has(image, 0)).toBe(false);
    expect(cache.has(other, 0)).toBe(true);
    expect(cache.cachedBytes(other)).toBe(G);
    await cache.close();
    map.close();
  });
});
