/* End to end: guest discard through a real FUSE mount on a real Azurite. A punched hole
 * (`fallocate --punch-hole`, as QEMU sends for a guest's TRIM, and `blkdiscard` on a loop
 * device over the image, which the loop driver turns into the same fallocate) reads back
 * as zeros at once, the data around it stays, and after `blobdisk flush` the page blob's
 * page ranges (listed by the SDK) no longer cover the hole: Clear Pages, not zeros put.
 * `fstrim` of ext4 on such a loop device frees a removed file's
 * pages. On a block blob the hole is uploaded as zeros. Other fallocate modes: allocating within
 * the size changes nothing, unsupported modes fail with "Operation not supported".
 * Needs root, /dev/fuse, libfuse3 and a free loop device. */

import type { ContainerClient } from '@azure/storage-blob';
import path from 'node:path';
import { startAzurite, type RunningAzurite } from '../../lib/azurite';
import { makeTempDir, randomData, removeTempDirs, sh, statOf, stopAllMounts, uploadBlockBlob, uploadPageBlob, type RunningMount } from '../support/mount';
import { KiB, MiB, containerOn, expectBytes, flushCli, freshCacheDir, mountOn, ok, readAll, sdkDownload, sdkPageBytes, unmountClean } from '../support/write-helpers';

const CONTAINER = 'discard';
const PAGE = { name: 'vm/disk.img', data: randomData(16 * MiB) };
const LOOP = { name: 'vm/loop.img', data: randomData(16 * MiB) };
const BLOCKS = { name: 'data/blocks.bin', blocks: [randomData(4 * MiB), randomData(4 * MiB)] };
/** Clear Pages covers whole aligned pieces of this size inside a hole (lib/flusher/plan.ts). */
const CLEAR_UNIT = 64 * KiB;

let azurite: RunningAzurite;
let container: ContainerClient;
let mount: RunningMount;
const at = (rel: string): string => path.join(mount.mnt, rel);

beforeAll(async () => {
  azurite = await startAzurite({ inMemory: true });
  container = await containerOn(azurite.connectionString, CONTAINER);
  await uploadPageBlob(container, PAGE.name, PAGE.data.length, [{ offset: 0, data: PAGE.data }]);
  await uploadPageBlob(container, LOOP.name, LOOP.data.length, [{ offset: 0, data: LOOP.data }]);
  await uploadBlockBlob(container, BLOCKS.name, BLOCKS.blocks);
  mount = await mountOn(azurite.connectionString, CONTAINER, await freshCacheDir(), ['--grain-size', '1M']);
});

afterAll(async () => {
  await stopAllMounts();
  await azurite?.stop();
  await removeTempDirs();
});

/** Bytes of the page blob's listed page ranges that fall inside [start, end). */
async function pageBytesWithin(name: string, start: number, end: number): Promise<number> {
  let n = 0;
  for await (const page of container.getPageBlobClient(name).listPageRanges().byPage()) {
    for (const r of page.pageRange ?? []) n += Math.max(0, Math.min(r.end + 1, end) - Math.max(r.start, start));
  }
  return n;
}

function punched(data: Buffer, offset: number, length: number): Buffer {
  const out = Buffer.from(data);
  out.fill(0, offset, offset + length);
  return out;
}

test('fallocate --punch-hole on a page blob reads zeros at once and clears its pages in Azure after a flush', async () => {
  // Unaligned at both ends and across grains: partial sectors, partial grains, whole grains.
  const offset = 3 * MiB + 1000;
  const length = 5 * MiB + 3000;
  const want = punched(PAGE.data, offset, length);
  const before = await sdkPageBytes(container, PAGE.name);
  expect(before).toBe(PAGE.data.length);

  ok(await sh('fallocate', ['--punch-hole', '--offset', String(offset), '--length', String(length), at(PAGE.name)]), 'fallocate --punch-hole');
  expect(await statOf(at(PAGE.name), '%s')).toBe(String(PAGE.data.length));
  expectBytes(await readAll(at(PAGE.name)), want, 'the image read back through the mount right after the punch');

  ok(await flushCli(mount, at(PAGE.name)), 'blobdisk flush');
  expectBytes(await sdkDownload(container, PAGE.name), want, 'the blob in Azure after the flush');
  // The hole's whole 64 KiB pieces are no page range any more; only its ragged edges, which
  // share a piece with data, may still be.
  const clearFrom = Math.ceil(offset / CLEAR_UNIT) * CLEAR_UNIT;
  const clearTo = Math.floor((offset + length) / CLEAR_UNIT) * CLEAR_UNIT;
  expect(await pageBytesWithin(PAGE.name, clearFrom, clearTo)).toBe(0);
  expect(await sdkPageBytes(container, PAGE.name)).toBe(before - (clearTo - clearFrom));
}, 120_000);

test('other fallocate modes: allocate within the size changes nothing and past it grows, zero-range zeroes, collapse-range is not supported', async () => {
  let want = punched(PAGE.data, 3 * MiB + 1000, 5 * MiB + 3000);
  ok(await sh('fallocate', ['--offset', '0', '--length', String(MiB), at(PAGE.name)]), 'fallocate (allocate) within the size');
  expect(await statOf(at(PAGE.name), '%s')).toBe(String(PAGE.data.length));
  const r = await sh('fallocate', ['--collapse-range', '--offset', '0', '--length', String(MiB), at(PAGE.name)]);
  expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 1, stderr: expect.stringMatching(/Operation not supported/) });
  ok(await sh('fallocate', ['--zero-range', '--keep-size', '--offset', String(12 * MiB), '--length', String(MiB + 512), at(PAGE.name)]), 'fallocate --zero-range');
  want = punched(want, 12 * MiB, MiB + 512);
  expectBytes(await readAll(at(PAGE.name)), want, 'the image after the other modes');
  ok(await sh('fallocate', ['--offset', String(16 * MiB), '--length', String(MiB), at(PAGE.name)]), 'fallocate (allocate) past the end');
  expect(await statOf(at(PAGE.name), '%s')).toBe(String(17 * MiB));
  ok(await flushCli(mount, at(PAGE.name)), 'blobdisk flush');
  expectBytes(await sdkDownload(container, PAGE.name), Buffer.concat([want, Buffer.alloc(MiB)]), 'the blob in Azure after the other modes');
}, 90_000);

test('blkdiscard on a loop device over the image shrinks the page blob\'s page ranges', async () => {
  const loop = ok(await sh('losetup', ['--find', '--show', at(LOOP.name)]), 'losetup').stdout.trim();
  try {
    ok(await sh('blkdiscard', ['--offset', String(4 * MiB), '--length', String(8 * MiB), loop]), `blkdiscard ${loop}`);
  } finally {
    ok(await sh('losetup', ['--detach', loop]), `losetup --detach ${loop}`);
  }
  const want = punched(LOOP.data, 4 * MiB, 8 * MiB);
  expectBytes(await readAll(at(LOOP.name)), want, 'the image read back after blkdiscard');
  ok(await flushCli(mount, at(LOOP.name)), 'blobdisk flush');
  expect(await pageBytesWithin(LOOP.name, 4 * MiB, 12 * MiB)).toBe(0);
  expect(await sdkPageBytes(container, LOOP.name)).toBe(8 * MiB);
  expectBytes(await sdkDownload(container, LOOP.name), want, 'the blob in Azure after the flush');
}, 120_000);

test('fstrim on ext4 over a loop device frees the pages of a removed file in Azure', async () => {
  const name = 'vm/ext4.img';
  ok(await sh('truncate', ['-s', String(64 * MiB), at(name)]), 'truncate');
  const loop = ok(await sh('losetup', ['--find', '--show', at(name)]), 'losetup').stdout.trim();
  const dir = await makeTempDir('blobdisk-ext4-');
  let mounted = false;
  try {
    ok(await sh('mkfs.ext4', ['-q', '-F', loop]), 'mkfs.ext4');
    ok(await sh('mount', [loop, dir]), 'mount ext4');
    mounted = true;
    ok(await sh('dd', ['if=/dev/urandom', `of=${dir}/data`, 'bs=1M', 'count=16', 'conv=fsync', 'status=none']), 'dd into ext4');
    ok(await flushCli(mount, at(name)), 'blobdisk flush');
    const withFile = await sdkPageBytes(container, name);
    expect(withFile).toBeGreaterThanOrEqual(16 * MiB);
    ok(await sh('rm', [`${dir}/data`]), 'rm');
    // ext4 frees a removed file's blocks when its journal commits; fstrim skips them before.
    ok(await sh('sync', ['-f', dir]), 'sync');
    const trimmed = ok(await sh('fstrim', ['-v', dir]), 'fstrim').stdout;
    expect(trimmed).toMatch(/trimmed/);
    ok(await sh('umount', [dir]), 'umount ext4');
    mounted = false;
    ok(await flushCli(mount, at(name)), 'blobdisk flush');
    expect(await sdkPageBytes(container, name)).toBeLessThanOrEqual(withFile - 15 * MiB);
  } finally {
    if (mounted) await sh('umount', [dir]);
    ok(await sh('losetup', ['--detach', loop]), `losetup --detach ${loop}`);
  }
  ok(await sh('e2fsck', ['-fn', at(name)]), 'e2fsck of the image after fstrim');
}, 180_000);

test('a hole punched into a block blob is uploaded as zeros', async () => {
  const data = Buffer.concat(BLOCKS.blocks);
  const want = punched(data, 3 * MiB, 2 * MiB + 100);
  ok(await sh('fallocate', ['--punch-hole', '--offset', String(3 * MiB), '--length', String(2 * MiB + 100), at(BLOCKS.name)]), 'fallocate --punch-hole');
  expectBytes(await readAll(at(BLOCKS.name)), want, 'the block blob read back through the mount');
  ok(await flushCli(mount, at(BLOCKS.name)), 'blobdisk flush');
  expectBytes(await sdkDownload(container, BLOCKS.name), want, 'the block blob in Azure after the flush');
}, 120_000);

test('the mount drains and exits cleanly after the discards', async () => {
  await unmountClean(mount);
}, 60_000);
