/* End to end: nothing acknowledged by fsync is lost when the mount process is killed.
 * A mount runs as a child on an Azurite owned by this test process (so Azurite survives);
 * one writer fsyncs known data into a page blob and into block blobs; a second writer then
 * keeps writing chunks into the page blob, each with fsync, and the mount is killed with
 * SIGKILL in the middle of it. After `umount` (fusermount3 -u) of the dead mount, a new mount on the
 * same cache directory takes the leases back and uploads what was dirty; after `blobdisk
 * flush` the view through that mount equals a direct SDK download, and that download holds
 * every fsynced byte. Needs root, /dev/fuse and libfuse3. */

import type { ContainerClient } from '@azure/storage-blob';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { startAzurite, type RunningAzurite } from '../../lib/azurite';
import {
  forceUnmount,
  isMounted,
  makeTempDir,
  randomData,
  removeTempDirs,
  sh,
  stopAllMounts,
  uploadBlockBlob,
  uploadPageBlob,
  waitFor,
  within,
} from '../support/mount';
import {
  KiB,
  MiB,
  containerOn,
  ddWrite,
  expectBytes,
  flushCli,
  freshCacheDir,
  mountOn,
  ok,
  patched,
  readAll,
  sdkDownload,
  sdkProperties,
  unmountClean,
} from '../support/write-helpers';

const CONTAINER = 'crash';
const SECTOR = 512;

/** The page blob: 64 MiB, random data in its first 8 MiB. */
const DISK = 'vm/disk.img';
const DISK_SIZE = 64 * MiB;
const DISK_BASE = randomData(8 * MiB);
/** A block blob of "another tool" with 4 MiB + 9 MiB blocks. */
const OLD_BIN = 'files/old.bin';
const OLD_BLOCKS = [randomData(4 * MiB), randomData(9 * MiB)];

/** What the first writer fsyncs. */
const FSYNCED = {
  disk: { offset: 2 * MiB + 700, data: randomData(5 * MiB) },
  old: { offset: 5 * MiB + 3, data: randomData(MiB) },
  fresh: randomData(3 * MiB + 100),
};

/** The second writer: chunks of the source, each written with fsync, into [16 MiB, 48 MiB). */
const CHUNK = 128 * KiB;
const CHUNKS = 256;
const CHUNK_BASE = 16 * MiB;
const SECOND = randomData(CHUNK * CHUNKS);

let azurite: RunningAzurite;
let container: ContainerClient;

beforeAll(async () => {
  azurite = await startAzurite({ inMemory: true });
  container = await containerOn(azurite.connectionString, CONTAINER);
  await uploadPageBlob(container, DISK, DISK_SIZE, [{ offset: 0, data: DISK_BASE }]);
  await uploadBlockBlob(container, OLD_BIN, OLD_BLOCKS);
});

afterAll(async () => {
  await stopAllMounts();
  await azurite?.stop();
  await removeTempDirs();
});

test('kill -9 in the middle of writes: a new mount on the same cache uploads every fsynced byte', async () => {
  const cacheDir = await freshCacheDir();
  const first = await mountOn(azurite.connectionString, CONTAINER, cacheDir);
  const mnt = first.mnt;
  const at = (rel: string): string => path.join(mnt, rel);

  // Writer 1: known data, fsynced, into a page blob, an existing block blob and a new block blob.
  for (const [file, offset, data] of [
    [DISK, FSYNCED.disk.offset, FSYNCED.disk.data],
    [OLD_BIN, FSYNCED.old.offset, FSYNCED.old.data],
    ['files/fresh.bin', 0, FSYNCED.fresh],
  ] as const) {
    const r = await ddWrite(at(file), offset, data, { conv: ['fsync'] });
    expect({ file, code: r.code, stderr: r.stderr }).toEqual({ file, code: 0, stderr: '' });
  }

  // Writer 2: one dd per chunk, each with fsync; a chunk's number is logged once its dd returned.
  const work = await makeTempDir('blobdisk-crash-');
  const src = path.join(work, 'second.src');
  const progress = path.join(work, 'progress');
  await fsp.writeFile(src, SECOND);
  await fsp.writeFile(progress, '');
  const script = `
    i=0
    while [ $i -lt ${CHUNKS} ]; do
      dd if="$1" of="$2" bs=${CHUNK} count=1 skip=$i seek=$((i + ${CHUNK_BASE / CHUNK})) conv=notrunc,fsync status=none || exit 7
      echo $i >> "$3"
      i=$((i + 1))
      sleep 0.02
    done`;
  const writer = sh('sh', ['-c', script, 'sh', src, at(DISK), progress], { timeoutMs: 120_000 });
  const done = async (): Promise<number[]> => (await fsp.readFile(progress, 'utf8')).split('\n').filter((l) => l !== '').map(Number);
  expect(await waitFor(async () => (await done()).length >= 16, 60_000, 20)).toBe(true);

  // The mount holds data not yet uploaded while the writer runs (so recovery has work to do):
  // the flusher empties it every half second or so, hence a few samples.
  let dirtySeen = 0;
  for (let i = 0; i < 5 && dirtySeen === 0; i++) dirtySeen = (await first.status()).dirtyBytes;
  expect(await waitFor(async () => (await done()).length >= 24, 60_000, 20)).toBe(true);
  first.child.kill('SIGKILL');
  expect(await within(first.exited, 10_000, 'still running')).toEqual({ code: null, signal: 'SIGKILL' });
  const w = await writer;
  const completed = await done();
  // The writer was cut off in the middle: it failed on the dead mount, not finished.
  expect({ code: w.code, finished: completed.length === CHUNKS }).toEqual({ code: 7, finished: false });
  expect(w.stderr).toMatch(/Transport endpoint is not connected|Software caused connection abort|Input\/output error/);
  expect(dirtySeen).toBeGreaterThan(0);

  // Clear the dead mount, then mount again on the same cache dir (and mountpoint).
  await forceUnmount(mnt);
  expect(await isMounted(mnt)).toBe(false);
  await first.stop();

  const second = await mountOn(azurite.connectionString, CONTAINER, cacheDir, [], { mnt });
  const flush = await flushCli(second);
  expect({ code: flush.code, stderr: flush.code === 0 ? '' : flush.stderr }).toEqual({ code: 0, stderr: '' });
  expect((await second.status()).dirtyBytes).toBe(0);

  // The hot view (through the recovery mount) equals what Azure holds.
  const names = [DISK, OLD_BIN, 'files/fresh.bin'];
  const hot = new Map<string, Buffer>();
  for (const name of names) {
    const view = await readAll(at(name));
    hot.set(name, view);
    expectBytes(await sdkDownload(container, name), view, `${name}: Azure after the flush vs. the view through the recovery mount`);
  }
  await unmountClean(second);

  // Azure holds every fsynced byte.
  const disk = await sdkDownload(container, DISK);
  expectBytes(disk, hot.get(DISK) ?? Buffer.alloc(0), `${DISK}: Azure after unmount vs. the hot view`);
  expect(disk.length).toBe(DISK_SIZE);
  let want = patched(Buffer.alloc(DISK_SIZE), 0, DISK_BASE);
  want = patched(want, FSYNCED.disk.offset, FSYNCED.disk.data);
  const last = Math.max(...completed);
  for (const i of completed) want = patched(want, CHUNK_BASE + i * CHUNK, SECOND.subarray(i * CHUNK, (i + 1) * CHUNK));
  // Outside the chunk that was being written when the mount died, every byte is known.
  const cut = CHUNK_BASE + (last + 1) * CHUNK;
  expectBytes(disk.subarray(0, cut), want.subarray(0, cut), `${DISK} up to the chunk in flight`);
  expectBytes(disk.subarray(cut + CHUNK), want.subarray(cut + CHUNK), `${DISK} after the chunk in flight`);
  // In that chunk each sector is either untouched (zeros) or the new data, never anything else.
  const inFlight = SECOND.subarray((last + 1) * CHUNK, (last + 2) * CHUNK);
  const torn: number[] = [];
  for (let s = 0; s < CHUNK; s += SECTOR) {
    const got = disk.subarray(cut + s, cut + s + SECTOR);
    if (!got.equals(Buffer.alloc(SECTOR)) && !got.equals(inFlight.subarray(s, s + SECTOR))) torn.push(cut + s);
  }
  expect(torn).toEqual([]);

  expectBytes(await sdkDownload(container, OLD_BIN), patched(Buffer.concat(OLD_BLOCKS), FSYNCED.old.offset, FSYNCED.old.data), `${OLD_BIN} in Azure`);
  expectBytes(await sdkDownload(container, 'files/fresh.bin'), FSYNCED.fresh, 'files/fresh.bin in Azure');
  expect((await sdkProperties(container, 'files/fresh.bin')).type).toBe('BlockBlob');
  // The recovery mount released the lease it took back on the image it recovered. An image
  // the dead mount had already uploaded keeps that mount's lease until it expires: never an
  // infinite one.
  expect((await container.getBlobClient(DISK).getProperties()).leaseState).toBe('available');
  for (const name of names) {
    const p = await container.getBlobClient(name).getProperties();
    expect({ name, infinite: p.leaseState === 'leased' && p.leaseDuration === 'infinite' }).toEqual({ name, infinite: false });
  }
});

test('kill -9 right after fsync (nothing uploaded yet): the next mount uploads it', async () => {
  const cacheDir = await freshCacheDir();
  const first = await mountOn(azurite.connectionString, CONTAINER, cacheDir);
  const data = randomData(3 * MiB + 512);
  const offset = 40 * MiB - 512;
  const before = await sdkDownload(container, DISK);
  const r = await ddWrite(path.join(first.mnt, DISK), offset, data, { conv: ['fsync'] });
  first.child.kill('SIGKILL');
  expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
  await within(first.exited, 10_000, undefined);
  await first.stop();
  const want = patched(before, offset, data);
  // The flusher waits a moment before uploading, so the data was still only in the cache.
  expect((await sdkDownload(container, DISK)).equals(want)).toBe(false);

  const second = await mountOn(azurite.connectionString, CONTAINER, cacheDir, [], { mnt: first.mnt });
  ok(await flushCli(second), 'blobdisk flush');
  await unmountClean(second);
  expectBytes(await sdkDownload(container, DISK), want, `${DISK} in Azure after the recovery mount`);
  // A cold mount sees the recovered bytes too.
  const cold = await mountOn(azurite.connectionString, CONTAINER, await freshCacheDir());
  expectBytes(await readAll(path.join(cold.mnt, DISK)), want, `${DISK} through a cold mount`);
  await unmountClean(cold);
});

test('kill -9 right after writes acknowledged without fsync: the next mount uploads them', async () => {
  // Without fsync the grain rows and sizes of these writes may still be only in the grain
  // map's change log (folded into SQLite about once a second): the kill right after the
  // writes returned leaves them there (about 14 KB of records when measured), and the
  // next mount replays them.
  const cacheDir = await freshCacheDir();
  const first = await mountOn(azurite.connectionString, CONTAINER, cacheDir, ['--write-back-delay', '3600']);
  const onDisk = { offset: 50 * MiB + 1000, data: randomData(8 * MiB) };
  const fresh = randomData(3 * MiB + 77);
  const before = await sdkDownload(container, DISK);
  const writes = [
    await ddWrite(path.join(first.mnt, DISK), onDisk.offset, onDisk.data, { bs: 128 * KiB }),
    await ddWrite(path.join(first.mnt, 'files/unsynced.bin'), 0, fresh, { bs: 128 * KiB }),
  ];
  first.child.kill('SIGKILL');
  expect(writes.map((r) => ({ code: r.code, stderr: r.stderr }))).toEqual([{ code: 0, stderr: '' }, { code: 0, stderr: '' }]);
  await within(first.exited, 10_000, undefined);
  await first.stop();
  const want = patched(before, onDisk.offset, onDisk.data);
  expect((await sdkDownload(container, DISK)).equals(want)).toBe(false); // nothing went up

  const second = await mountOn(azurite.connectionString, CONTAINER, cacheDir, [], { mnt: first.mnt });
  ok(await flushCli(second), 'blobdisk flush');
  await unmountClean(second);
  expectBytes(await sdkDownload(container, DISK), want, `${DISK} in Azure after the recovery mount`);
  expectBytes(await sdkDownload(container, 'files/unsynced.bin'), fresh, 'files/unsynced.bin in Azure after the recovery mount');
});
