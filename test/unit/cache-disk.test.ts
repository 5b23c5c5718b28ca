/* Local disk errors and fsync's bookkeeping, injected through a CrashDisk
 * (test/support/crash-disk.ts): a full disk is ENOSPC for the application, a short write
 * leaves no unrecorded bytes, a failed fdatasync fails the fsync and the next one syncs
 * again, fsync syncs new directories, a change log that cannot be folded is reported once
 * and retried, and what a crash left half-done in the cache directory goes at open. */

import Database from 'better-sqlite3';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { GrainCache } from '../../lib/cache/cache';
import { isBlobdiskError } from '../../lib/errors';
import { errnoName } from '../../lib/fuse/errno';
import { GrainMap } from '../../lib/grainmap/grainmap';
import { Logger, silentLogger } from '../../lib/log';
import { DEFAULT_TUNABLES } from '../../lib/tunables';
import { CrashDisk } from '../support/crash-disk';
import { ManualClock, until } from '../support/manual-clock';

const G = 64 * 1024;

function setup(dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blobdisk-disk-'))) {
  const disk = new CrashDisk(dir);
  const map = GrainMap.open(path.join(dir, 'grainmap.db'), G, undefined, { disk });
  const cache = new GrainCache({ dir, sizeBytes: 16 * G, grainSize: G }, map, silentLogger);
  const a = map.ensureImage('acct', 'c', 'a.img', 'page', 16 * G).id;
  const b = map.ensureImage('acct', 'c', 'b.img', 'page', 16 * G).id;
  return { dir, disk, map, cache, a, b };
}

async function done(w: { cache: GrainCache; map: GrainMap }): Promise<void> {
  await w.cache.close();
  w.map.close();
}

const fileOf = (dir: string, image: number, idx: number): string => path.join(dir, 'grains', String(image), String(idx));

describe('local disk errors', () => {
  it.each(['ENOSPC', 'EDQUOT'])('a write that meets %s fails with ENOSPC for the application', async (code) => {
    const w = setup();
    await w.cache.fill(w.a, 0, Buffer.alloc(G, 1));
    w.disk.fail('writeSync', code);
    const failed = await w.cache.write(w.a, 0, 0, Buffer.alloc(4096, 2), 0).catch((e: unknown) => e);
    expect(isBlobdiskError(failed) && failed.kind).toBe('no-space');
    expect(errnoName(failed)).toBe('ENOSPC');
    expect((failed as Error).message).toMatch(/--cache-dir is full/);
    // Nothing landed: the grain is as it was, clean, and the next write works.
    expect(w.cache.state(w.a, 0)?.dirty).toBeNull();
    await w.cache.write(w.a, 0, 0, Buffer.alloc(4096, 3), 0);
    expect(w.cache.state(w.a, 0)?.dirty).not.toBeNull();
    await done(w);
  });

  it('a short write into a clean grain drops the grain: no unrecorded bytes are served', async () => {
    const w = setup();
    await w.cache.fill(w.a, 1, Buffer.alloc(G, 1));
    w.disk.fail('writeSync', 'ENOSPC', 1024);
    await expect(w.cache.write(w.a, 1, 0, Buffer.alloc(4096, 2), 0)).rejects.toThrow(/full/);
    expect(w.cache.has(w.a, 1)).toBe(false);
    expect(w.map.grain(w.a, 1)).toBeUndefined();
    await until(() => !fs.existsSync(fileOf(w.dir, w.a, 1)), 5000);
    await done(w);
  });

  it('a short write into a dirty grain records the part that reached the file', async () => {
    const w = setup();
    await w.cache.fill(w.a, 2, Buffer.alloc(G, 1));
    await w.cache.write(w.a, 2, 8192, Buffer.alloc(512, 9), 0);
    w.disk.fail('writeSync', 'ENOSPC', 1024);
    await expect(w.cache.write(w.a, 2, 0, Buffer.alloc(4096, 2), 0)).rejects.toThrow(/full/);
    const dirty = w.cache.state(w.a, 2)?.dirty as Buffer;
    expect(dirty[0]).toBe(0b11); // sectors 0 and 1: the 1024 bytes that landed
    expect(dirty[2]).toBe(0b1); // sector 16, written before
    expect(w.map.grain(w.a, 2)?.dirty).toEqual(dirty);
    await done(w);
  });
});

describe('fsync', () => {
  it('fails when fdatasync fails, and the next fsync syncs the same grains again', async () => {
    const w = setup();
    await w.cache.write(w.a, 0, 0, Buffer.alloc(4096, 1), 0);
    await w.cache.write(w.a, 3, 0, Buffer.alloc(4096, 1), 0);
    w.disk.fail('datasync', 'EIO');
    const failed = await w.cache.sync(w.a).catch((e: unknown) => e);
    expect(errnoName(failed)).toBe('EIO');
    expect(w.map.syncedGrains()).toEqual([]);
    const before = w.disk.calls.datasync;
    await w.cache.sync(w.a);
    expect(w.disk.calls.datasync - before).toBe(2);
    expect(w.map.syncedGrains().map((r) => r.idx).sort()).toEqual([0, 3]);
    // Nothing left to sync.
    const after = w.disk.calls.datasync;
    await w.cache.sync(w.a);
    expect(w.disk.calls.datasync).toBe(after);
    await done(w);
  });

  it("fails when the grain map's FULL commit fails, and the next fsync syncs the same grains again", async () => {
    const w = setup();
    await w.cache.write(w.a, 0, 0, Buffer.alloc(4096, 1), 0);
    w.disk.fail('commit', 'EIO');
    await expect(w.cache.sync(w.a)).rejects.toThrow(/EIO/);
    const before = w.disk.calls.datasync;
    await w.cache.sync(w.a);
    expect(w.disk.calls.datasync - before).toBe(1);
    expect(w.map.syncedGrains()).toHaveLength(1);
    await done(w);
  });

  it('a failed directory fsync fails the fsync and is done again by the next', async () => {
    const w = setup();
    await w.cache.write(w.a, 0, 0, Buffer.alloc(4096, 1), 0);
    w.disk.fail('syncDir', 'EIO');
    await expect(w.cache.sync(w.a)).rejects.toThrow(/fdatasync/);
    const dirs = w.disk.calls.syncDir;
    await w.cache.sync(w.a);
    // The cache directory, grains/ and grains/<image>: the new grain's entry and its directory's.
    expect(w.disk.calls.syncDir - dirs).toBeGreaterThanOrEqual(1);
    expect(w.map.syncedGrains()).toHaveLength(1);
    await done(w);
  });

  it("syncs and records one image's grains only, and a fetch into a dirty grain makes it unsynced again", async () => {
    const w = setup();
    await w.cache.write(w.a, 0, 0, Buffer.alloc(4096, 1), 0);
    await w.cache.write(w.b, 0, 0, Buffer.alloc(4096, 1), 0);
    let before = w.disk.calls.datasync;
    await w.cache.sync(w.a);
    expect(w.disk.calls.datasync - before).toBe(1);
    expect(w.map.syncedGrains().map((r) => r.imageId)).toEqual([w.a]);
    before = w.disk.calls.datasync;
    await w.cache.fill(w.a, 0, Buffer.alloc(G, 5));
    await w.cache.sync();
    expect(w.disk.calls.datasync - before).toBe(2); // a's filled grain and b's
    expect(w.map.syncedGrains().map((r) => r.imageId).sort()).toEqual([w.a, w.b].sort());
    await done(w);
  });
});

describe('the grain map', () => {
  it('reports a change log it cannot fold once, keeps the changes, and retries until it works', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blobdisk-fold-'));
    const clock = new ManualClock();
    const lines: string[] = [];
    const log: Logger = { ...silentLogger, error: (m) => lines.push(`error ${m}`), info: (m) => lines.push(`info ${m}`) };
    const file = path.join(dir, 'grainmap.db');
    const map = GrainMap.open(file, G, { clock, tunables: DEFAULT_TUNABLES }, { log });
    const id = map.ensureImage('acct', 'c', 'a.img', 'page', G).id;
    // Another connection makes every insert into grains fail, as a broken database would.
    const other = new Database(file);
    other.exec("CREATE TRIGGER broken BEFORE INSERT ON grains BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END");
    map.putGrain({ imageId: id, idx: 0, length: G, checksum: null, valid: null, dirty: Buffer.alloc(16, 1), lastAccess: 1 });
    await clock.advance(DEFAULT_TUNABLES.foldMs);
    await clock.advance(DEFAULT_TUNABLES.foldMs);
    await clock.advance(DEFAULT_TUNABLES.foldMs);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^error the grain map cannot write its change log .*disk I\/O error.*stay committed.*retrying every 1000 ms/);
    other.exec('DROP TRIGGER broken');
    other.close();
    await clock.advance(DEFAULT_TUNABLES.foldMs);
    expect(lines).toHaveLength(2);
    expect(lines[1]).toMatch(/^info the grain map writes its change log into .* again/);
    expect(map.grain(id, 0)?.dirty).toEqual(Buffer.alloc(16, 1));
    map.close();
  });
});

describe('open after a crash', () => {
  it('removes fetched grains never renamed into place and files no grain row names', async () => {
    const w = setup();
    await w.cache.fill(w.a, 0, Buffer.alloc(G, 1));
    await done(w);
    fs.writeFileSync(`${fileOf(w.dir, w.a, 0)}.partial`, Buffer.alloc(100));
    fs.writeFileSync(`${fileOf(w.dir, w.a, 5)}.partial`, Buffer.alloc(100));
    fs.writeFileSync(fileOf(w.dir, w.a, 7), Buffer.alloc(100));
    const again = setup(w.dir);
    expect(fs.readdirSync(path.dirname(fileOf(w.dir, w.a, 0)))).toEqual(['0']);
    expect(again.cache.has(w.a, 0)).toBe(true);
    await done(again);
  });
});
