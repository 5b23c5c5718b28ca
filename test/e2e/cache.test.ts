/* End to end: the grain cache through a real mount. Eviction under a small --cache-size,
 * a second mount served from the cache without a single GET, an ETag change dropping the
 * cached grains (between mounts and while mounted), and damaged cache files refetched
 * instead of served. Tools run as child processes; the mount runs in its own process. */

import { BlobServiceClient, type ContainerClient } from '@azure/storage-blob';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { startAzurite, type RunningAzurite } from '../../lib/azurite';
import {
  makeTempDir,
  randomData,
  removeTempDirs,
  sdkSha256,
  sha256,
  sha256OfFile,
  sleep,
  startMount,
  statOf,
  stopAllMounts,
  uploadBlockBlob,
  uploadPageBlob,
  type RunningMount,
} from '../support/mount';

const MiB = 1024 * 1024;

/** 12 MiB in blocks that do not line up with the 1 MiB grains. */
const BIG_NAME = 'big.bin';
const BIG_BLOCKS = [3 * MiB + 1000, 5 * MiB - 1000, 4 * MiB].map((n) => randomData(n));
const BIG = Buffer.concat(BIG_BLOCKS);

let azurite: RunningAzurite;
let container: ContainerClient;
let work: string;

beforeAll(async () => {
  azurite = await startAzurite({ inMemory: true });
  container = BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient('cache');
  await container.create();
  await uploadBlockBlob(container, BIG_NAME, BIG_BLOCKS);
  work = await makeTempDir();
});

afterAll(async () => {
  await stopAllMounts();
  await azurite?.stop();
  await removeTempDirs();
});

function mountArgs(cacheDir: string, ...more: string[]): string[] {
  return [
    '--connection-string', azurite.connectionString,
    '--container', 'cache',
    '--cache-dir', path.join(work, cacheDir),
    '--grain-size', '1M',
    '--log-level', 'warn',
    ...more,
  ];
}

async function stopOk(m: RunningMount): Promise<void> {
  const stopped = await m.stop();
  expect(stopped.code).toBe(0);
  expect(stopped.clean).toBe(true);
}

/** Paths and sizes of the grain files under a cache directory. */
async function grainFiles(cacheDir: string): Promise<{ file: string; size: number }[]> {
  const root = path.join(work, cacheDir, 'grains');
  const out: { file: string; size: number }[] = [];
  for (const image of await fsp.readdir(root)) {
    for (const idx of await fsp.readdir(path.join(root, image))) {
      const file = path.join(root, image, idx);
      out.push({ file, size: (await fsp.stat(file)).size });
    }
  }
  return out;
}

test('eviction under --cache-size 4M: reading 12 MiB twice (and by 4 readers at once) gives the right bytes within the bound', async () => {
  const m = await startMount(mountArgs('small', '--cache-size', '4M'));
  try {
    const file = path.join(m.mnt, BIG_NAME);
    const expected = await sdkSha256(container, BIG_NAME);
    expect(expected).toBe(sha256(BIG));
    expect(await sha256OfFile(file)).toBe(expected);
    expect(await sha256OfFile(file)).toBe(expected);
    // Four readers at once, racing over grains that evict each other: the bound holds
    // also while several fetches complete together. A few rounds, as the overlap varies.
    const used: number[] = [];
    for (let round = 0; round < 3; round++) {
      const all = await Promise.all([0, 1, 2, 3].map(() => sha256OfFile(file)));
      expect(all).toEqual([expected, expected, expected, expected]);
      used.push((await m.status()).cacheUsedBytes);
    }

    const status = await m.status();
    expect(status.cacheSizeBytes).toBe(4 * MiB);
    expect(Math.max(...used, status.cacheUsedBytes)).toBeLessThanOrEqual(4 * MiB);
    // The cache could not keep the blob, so later reads fetched it again.
    expect(status.totals.bytesDown).toBeGreaterThan(BIG.length);
    const files = await grainFiles('small');
    expect(files.reduce((n, f) => n + f.size, 0)).toBeLessThanOrEqual(4 * MiB);
  } finally {
    await stopOk(m);
  }
});

test('a second mount with the same --cache-dir serves the blob without any data request', async () => {
  const first = await startMount(mountArgs('warm'));
  try {
    expect(await sha256OfFile(path.join(first.mnt, BIG_NAME))).toBe(sha256(BIG));
    const status = await first.status();
    expect(status.totals.bytesDown).toBeGreaterThanOrEqual(BIG.length);
    expect(status.cacheUsedBytes).toBe(BIG.length);
  } finally {
    await stopOk(first);
  }

  const second = await startMount(mountArgs('warm'));
  try {
    expect(await sha256OfFile(path.join(second.mnt, BIG_NAME))).toBe(sha256(BIG));
    const status = await second.status();
    expect(status.totals.fetches).toBe(0);
    expect(status.totals.bytesDown).toBe(0);
    expect(status.totals.misses).toBe(0);
    expect(status.totals.hits).toBeGreaterThan(0);
    expect(status.totals.bytesRead).toBeGreaterThanOrEqual(BIG.length);
    expect(status.bytesDown).toBe(0);
  } finally {
    await stopOk(second);
  }
});

test('an ETag change between two mounts drops the cached grains: the new bytes are read', async () => {
  const name = 'changes-between.img';
  const v1 = randomData(3 * MiB);
  const v2 = randomData(3 * MiB);
  await uploadPageBlob(container, name, v1.length, [{ offset: 0, data: v1 }]);

  const first = await startMount(mountArgs('etag-between'));
  try {
    expect(await sha256OfFile(path.join(first.mnt, name))).toBe(sha256(v1));
  } finally {
    await stopOk(first);
  }

  await uploadPageBlob(container, name, v2.length, [{ offset: 0, data: v2 }]);
  expect(await sdkSha256(container, name)).toBe(sha256(v2));

  const second = await startMount(mountArgs('etag-between'));
  try {
    expect(await sha256OfFile(path.join(second.mnt, name))).toBe(sha256(v2));
    const status = await second.status();
    expect(status.totals.bytesDown).toBeGreaterThanOrEqual(v2.length);
  } finally {
    await stopOk(second);
  }
});

test('an ETag change while mounted: re-opening the file reads the new bytes', async () => {
  const name = 'changes-live.bin';
  const v1 = randomData(2 * MiB + 123);
  const v2 = randomData(2 * MiB + 123);
  await uploadBlockBlob(container, name, [v1]);

  const m = await startMount(mountArgs('etag-live'));
  try {
    const file = path.join(m.mnt, name);
    expect(await sha256OfFile(file)).toBe(sha256(v1));
    const before = (await m.status()).totals.bytesDown;

    // Same size: only the content changed.
    await uploadBlockBlob(container, name, [v2]);
    expect(await sha256OfFile(file)).toBe(sha256(v2));
    expect((await m.status()).totals.bytesDown - before).toBeGreaterThanOrEqual(v2.length);
  } finally {
    await stopOk(m);
  }
});

describe('an ETag change while mounted that also changes the size', () => {
  test('after the attribute TTL (--dir-cache-time, 1 s here), stat and a new open see the new size and bytes (block blob and page blob)', async () => {
    const block = { name: 'grows-after-ttl.bin', v1: randomData(MiB), v2: randomData(3 * MiB + 5) };
    const page = { name: 'grows-after-ttl.img', v1: randomData(MiB), v2: randomData(3 * MiB) };
    await uploadBlockBlob(container, block.name, [block.v1]);
    await uploadPageBlob(container, page.name, page.v1.length, [{ offset: 0, data: page.v1 }]);

    const m = await startMount(mountArgs('etag-grow-ttl', '--dir-cache-time', '1'));
    try {
      const at = (name: string): string => path.join(m.mnt, name);
      expect(await sha256OfFile(at(block.name))).toBe(sha256(block.v1));
      expect(await sha256OfFile(at(page.name))).toBe(sha256(page.v1));
      await uploadBlockBlob(container, block.name, [block.v2]);
      await uploadPageBlob(container, page.name, page.v2.length, [{ offset: 0, data: page.v2 }]);
      // Listings and attributes are trusted for --dir-cache-time (1 s), the kernel's for 1 s more.
      await sleep(2_500);
      const seen: Record<string, string> = {};
      for (const f of [block, page]) {
        seen[`${f.name} size`] = await statOf(at(f.name), '%s');
        seen[`${f.name} sha256`] = await sha256OfFile(at(f.name));
      }
      expect(seen).toEqual({
        [`${block.name} size`]: String(block.v2.length),
        [`${block.name} sha256`]: sha256(block.v2),
        [`${page.name} size`]: String(page.v2.length),
        [`${page.name} sha256`]: sha256(page.v2),
      });
    } finally {
      await stopOk(m);
    }
  });

  test('once an open has seen the new ETag, the next open (past the kernel attribute timeout) sees the new size too', async () => {
    const name = 'grows-live.bin';
    const v1 = randomData(MiB);
    const v2 = randomData(3 * MiB + 5);
    await uploadBlockBlob(container, name, [v1]);

    const m = await startMount(mountArgs('etag-grow'));
    try {
      const file = path.join(m.mnt, name);
      expect(await sha256OfFile(file)).toBe(sha256(v1));
      await uploadBlockBlob(container, name, [v2]);
      // This open fetches the blob's new properties (and drops the old grains), while the
      // kernel may still hold the old size: its result is not checked.
      await sha256OfFile(file);
      // Past the kernel's own attribute timeout (libfuse's default is 1 s), the size the
      // mount reports must be the one the open saw: the new bytes must never be cut at the
      // old size (a file that never existed in Azure).
      await sleep(1_500);
      const sum = await sha256OfFile(file);
      expect({ sum, size: await statOf(file, '%s') }).toEqual({ sum: sha256(v2), size: String(v2.length) });
    } finally {
      await stopOk(m);
    }
  });
});

test('damaged cache files (overwritten, truncated, deleted) are refetched, never served', async () => {
  const first = await startMount(mountArgs('damaged'));
  try {
    expect(await sha256OfFile(path.join(first.mnt, BIG_NAME))).toBe(sha256(BIG));
  } finally {
    await stopOk(first);
  }

  const files = await grainFiles('damaged');
  expect(files.length).toBe(BIG.length / MiB);
  const byIdx = new Map(files.map((f) => [path.basename(f.file), f.file] as const));
  const overwritten = byIdx.get('3');
  const truncated = byIdx.get('5');
  const deleted = byIdx.get('7');
  if (overwritten === undefined || truncated === undefined || deleted === undefined) throw new Error(`unexpected grain files: ${[...byIdx.keys()]}`);
  // Same length, different bytes in the middle: only a checksum can tell.
  const handle = await fsp.open(overwritten, 'r+');
  await handle.write(Buffer.alloc(100, 0x5a), 0, 100, 500_000);
  await handle.close();
  await fsp.truncate(truncated, MiB / 2);
  await fsp.rm(deleted);

  const second = await startMount(mountArgs('damaged'));
  try {
    expect(await sha256OfFile(path.join(second.mnt, BIG_NAME))).toBe(sha256(BIG));
    const status = await second.status();
    expect(status.totals.fetches).toBeGreaterThan(0);
    expect(status.totals.bytesDown).toBeGreaterThanOrEqual(3 * MiB);
    expect(status.totals.bytesDown).toBeLessThan(BIG.length);
    expect(status.totals.hits).toBeGreaterThan(0);
  } finally {
    await stopOk(second);
  }

  // The refetched grains were cached again, correctly this time.
  const third = await startMount(mountArgs('damaged'));
  try {
    expect(await sha256OfFile(path.join(third.mnt, BIG_NAME))).toBe(sha256(BIG));
    const status = await third.status();
    expect(status.totals.fetches).toBe(0);
    expect(status.totals.bytesDown).toBe(0);
  } finally {
    await stopOk(third);
  }
});
