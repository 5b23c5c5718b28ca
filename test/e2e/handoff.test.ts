/* End to end: moving an image between hosts. Every "host" is a real mount with its own cache
 * directory on one real Azurite, driven by dd and the CLI. A second writer gets EBUSY and its
 * log names the holder (host, mountpoint, since) from the blob's metadata; `blobdisk handoff`
 * drains and releases the image, and a mount with --warm-from takes the lease and prefetches
 * the hot grains (reads after it need no GET; data equals SDK downloads); a handoff file of a
 * blob written since is refused with one log line; after kill -9 of a holder another host
 * takes the image once the lease ran out, and the killed host, mounted again, overwrites
 * nothing: its data not yet uploaded becomes a conflict. Boot-time prefetch: the grains an
 * image read first are warmed when the cache next holds nothing of it (here: after the blob
 * changed elsewhere). Needs root, /dev/fuse and libfuse2. */

import type { ContainerClient } from '@azure/storage-blob';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startAzurite, type RunningAzurite } from '../../lib/azurite';
import type { MountStatus } from '../../lib/mount';
import { cliEnv, isMounted, makeTempDir, randomData, removeTempDirs, runCli, sh, stopAllMounts, uploadPageBlob, waitFor, within, type RunningMount } from '../support/mount';
import { MiB, containerOn, ddWrite, expectBytes, flushCli, freshCacheDir, imageStatus, mountOn, ok, readRange, sdkDownload } from '../support/write-helpers';

const CONTAINER = 'handoff';
const DISK = 'vm/disk.img';
const SIZE = 32 * MiB;
const BASE = randomData(8 * MiB);
/* Short leases: a dead holder's lease runs out 15 s after its last renewal. */
const LEASE_ENV = { BLOBDISK_LEASE_SECONDS: '15' };
const LEASE_BOUND_MS = 15_000 + 30_000;
const BOOT = 'vm/boot.img';
const BOOT_DATA = randomData(16 * MiB);

let azurite: RunningAzurite;
let container: ContainerClient;

const mount = (cacheDir: string, more: readonly string[] = []): Promise<RunningMount> =>
  mountOn(azurite.connectionString, CONTAINER, cacheDir, more, { env: cliEnv(LEASE_ENV) });
const cli = (args: readonly string[]) => runCli(args, { timeoutMs: 90_000, env: cliEnv() });
const props = () => container.getBlobClient(DISK).getProperties();

async function prefetchOf(m: RunningMount): Promise<MountStatus['images'][number]['prefetch']> {
  return (await imageStatus(m, DISK)).prefetch;
}

beforeAll(async () => {
  azurite = await startAzurite({ inMemory: true });
  container = await containerOn(azurite.connectionString, CONTAINER);
  await uploadPageBlob(container, DISK, SIZE, [{ offset: 0, data: BASE }]);
  await uploadPageBlob(container, BOOT, 16 * MiB, [{ offset: 0, data: BOOT_DATA }]);
});

afterAll(async () => {
  await stopAllMounts();
  await azurite?.stop();
  await removeTempDirs();
});

describe('two hosts on one image', () => {
  let first: RunningMount;
  let second: RunningMount;
  let expected: Buffer;
  let handoffFile: string;

  test('a second writer gets EBUSY and its log names the holder; reading there writes no metadata', async () => {
    first = await mount(await freshCacheDir());
    const patch = randomData(MiB);
    const w = await ddWrite(path.join(first.mnt, DISK), 2 * MiB, patch, { conv: ['fsync'] });
    expect({ code: w.code, stderr: w.stderr }).toEqual({ code: 0, stderr: '' });
    expected = Buffer.alloc(SIZE);
    BASE.copy(expected);
    patch.copy(expected, 2 * MiB);
    // The hot grains of the first host: the first 8 MiB, read last.
    expectBytes(await readRange(path.join(first.mnt, DISK), 0, 8 * MiB), expected.subarray(0, 8 * MiB), 'read on the first host');

    // Uploaded, so the ETag moves no more while the second host looks.
    ok(await flushCli(first), 'flush on the first host');
    const held = await props();
    expect(held.leaseState).toBe('leased');
    const holder = held.metadata?.blobdisk_holder ?? '';
    expect(holder).toMatch(new RegExp(`^host=${os.hostname()} mount=${first.mnt} since=\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\dZ$`));

    second = await mount(await freshCacheDir());
    expectBytes(await readRange(path.join(second.mnt, DISK), 0, 4 * MiB), expected.subarray(0, 4 * MiB), 'read on the second host');
    expect((await props()).etag).toBe(held.etag);
    const refused = await ddWrite(path.join(second.mnt, DISK), 0, randomData(4096), { bs: 4096 });
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/Device or resource busy/);
    expect(second.stderr()).toContain(`${CONTAINER}/${DISK} is leased by ${holder}: opening it for writing here fails with EBUSY`);
    expect((await props()).etag).toBe(held.etag);
    await second.stop();
  });

  test('handoff drains and releases; --warm-from takes the lease and prefetches the hot grains', async () => {
    // Written, not yet uploaded: the handoff drains it.
    const late = randomData(MiB);
    ok(await ddWrite(path.join(first.mnt, DISK), 5 * MiB, late), 'dd on the first host');
    late.copy(expected, 5 * MiB);
    handoffFile = path.join(await makeTempDir('blobdisk-handoff-'), 'disk.handoff');
    const started = Date.now();
    const r = await cli(['handoff', first.mnt, DISK, '--to', handoffFile]);
    expect({ code: r.code, stderr: r.code === 0 ? '' : r.stderr }).toEqual({ code: 0, stderr: '' });
    expect(r.stdout.trim()).toBe(handoffFile);
    expect(Date.now() - started).toBeLessThan(60_000);
    expect((await fsp.stat(handoffFile)).mode & 0o777).toBe(0o600);
    const h = JSON.parse(await fsp.readFile(handoffFile, 'utf8')) as { etag: string; hot: number[]; grainSize: number; container: string; blob: string; size: number };
    const after = await props();
    expect({ lease: after.leaseState, etag: h.etag, blob: `${h.container}/${h.blob}`, size: h.size }).toEqual({ lease: 'available', etag: after.etag, blob: `${CONTAINER}/${DISK}`, size: SIZE });
    expect(h.grainSize).toBe(MiB);
    expect([...h.hot].sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expectBytes(await sdkDownload(container, DISK), expected, 'blob after the handoff');

    const cacheDir = await freshCacheDir();
    second = await mount(cacheDir, ['--warm-from', handoffFile]);
    expect((await props()).leaseState).toBe('leased');
    expect((await props()).metadata?.blobdisk_holder).toContain(`mount=${second.mnt} `);
    expect(await waitFor(async () => (await prefetchOf(second))?.state === 'done', 60_000)).toBe(true);
    const warm = await prefetchOf(second);
    expect(warm).toEqual({ done: 8, total: 8, fetched: 8, state: 'done' });
    const before = await imageStatus(second, DISK);
    expect(before.bytesDown).toBe(8 * MiB);
    // The hot grains are local: reading them needs no GET.
    expectBytes(await readRange(path.join(second.mnt, DISK), 0, 8 * MiB), expected.subarray(0, 8 * MiB), 'warm read on the second host');
    const afterRead = await imageStatus(second, DISK);
    expect({ bytesDown: afterRead.bytesDown, misses: afterRead.counters.misses }).toEqual({ bytesDown: before.bytesDown, misses: before.counters.misses });
    // And the new holder writes.
    const mine = randomData(MiB);
    ok(await ddWrite(path.join(second.mnt, DISK), 9 * MiB, mine, { conv: ['fsync'] }), 'dd on the second host');
    mine.copy(expected, 9 * MiB);
    ok(await flushCli(second), 'flush on the second host');
    expectBytes(await sdkDownload(container, DISK), expected, 'blob written by the second host');
    await first.stop();
  });

  test('a handoff file of a blob written since is stale: the mount goes on, takes no lease, prefetches nothing', async () => {
    const file = path.join(path.dirname(handoffFile), 'again.handoff');
    ok(await cli(['handoff', second.mnt, DISK, '--to', file]), 'second handoff');
    await second.stop();
    // Someone writes the blob after the handoff.
    const other = randomData(64 * 1024);
    await container.getPageBlobClient(DISK).uploadPages(other, 20 * MiB, other.length);
    other.copy(expected, 20 * MiB);
    const third = await mount(await freshCacheDir(), ['--warm-from', file]);
    expect(third.stderr()).toMatch(new RegExp(`handoff ${file} is stale: ${CONTAINER}/${DISK} changed after the handoff .*its lease was not taken and nothing is prefetched`));
    expect((await props()).leaseState).toBe('available');
    const status = await third.status();
    expect(status.images.filter((i) => i.prefetch !== null)).toEqual([]);
    expectBytes(await readRange(path.join(third.mnt, DISK), 20 * MiB, 64 * 1024), other, 'read on the third host');
    await third.stop();
    // A file that is no handoff file is refused at once, in one line.
    const bad = await cli(['mount', path.join(os.tmpdir(), 'nowhere'), '--warm-from', path.join(path.dirname(file), 'missing.handoff')]);
    expect({ code: bad.code, line: bad.stderr.trim() }).toEqual({ code: 1, line: expect.stringMatching(/^blobdisk: --warm-from .*missing\.handoff: cannot read it; give the file blobdisk handoff wrote/) });
  });
});

test('kill -9 of the holder: another host takes the image after the lease ran out; the killed one, back, overwrites nothing', async () => {
  const cacheA = await freshCacheDir();
  const a = await mount(cacheA, ['--write-back-delay', '600']);
  const mntA = a.mnt;
  // Acknowledged and fsynced on A, not uploaded (the write-back delay is long).
  const mineA = randomData(MiB);
  ok(await ddWrite(path.join(mntA, DISK), 12 * MiB, mineA, { conv: ['fsync'] }), 'dd on A');
  expect((await props()).leaseState).toBe('leased');
  a.child.kill('SIGKILL');
  expect(await within(a.exited, 10_000, 'still running')).toEqual({ code: null, signal: 'SIGKILL' });
  await sh('fusermount', ['-u', mntA]);
  if (await isMounted(mntA)) await sh('fusermount', ['-uz', mntA]);
  await a.stop();

  const b = await mount(await freshCacheDir());
  const killedAt = Date.now();
  const mineB = randomData(MiB);
  let took = false;
  while (!took && Date.now() - killedAt < LEASE_BOUND_MS) {
    const w = await ddWrite(path.join(b.mnt, DISK), 12 * MiB, mineB, { conv: ['fsync'] });
    took = w.code === 0;
    if (!took) {
      expect(w.stderr).toMatch(/Device or resource busy/);
      await new Promise((r) => setTimeout(r, 2_000));
    }
  }
  expect({ took, inBound: Date.now() - killedAt <= LEASE_BOUND_MS }).toEqual({ took: true, inBound: true });
  expect(b.stderr()).toContain(`is leased by host=${os.hostname()} mount=${mntA} since=`);
  ok(await flushCli(b), 'flush on B');
  await b.stop();
  const expected = await sdkDownload(container, DISK);
  expectBytes(expected.subarray(12 * MiB, 13 * MiB), mineB, "B's data in Azure");

  // A comes back on its cache: what it still holds for the blob is a conflict, not an upload.
  const back = await mount(cacheA);
  expect(await waitFor(async () => /changed in Azure while this cache holds changes not yet uploaded; nothing was overwritten/.test(back.stderr()), 30_000)).toBe(true);
  const status = await back.status();
  expect(status.images.find((i) => i.path === DISK)?.conflict ?? 'none').toMatch(/nothing was overwritten/);
  expect((await back.stop()).code).not.toBe(0);
  expectBytes(await sdkDownload(container, DISK), expected, 'blob after A came back');
});

test('boot-time prefetch: the grains first read are warmed when the cache next holds nothing of the image', async () => {
  const cacheDir = await freshCacheDir();
  const trace = [1, 5, 9];
  const boot = await mount(cacheDir);
  for (const g of trace) expectBytes(await readRange(path.join(boot.mnt, BOOT), g * MiB + 4096, 4096), BOOT_DATA.subarray(g * MiB + 4096, g * MiB + 8192), `boot read of grain ${g}`);
  expect((await imageStatus(boot, BOOT)).prefetch).toBeNull();
  await boot.stop();
  // Changed elsewhere: the next mount drops what its cache held of the image.
  const other = randomData(4096);
  await container.getPageBlobClient(BOOT).uploadPages(other, 14 * MiB, other.length);
  other.copy(BOOT_DATA, 14 * MiB);
  const again = await mount(cacheDir);
  expectBytes(await readRange(path.join(again.mnt, BOOT), 0, 4096), BOOT_DATA.subarray(0, 4096), 'first read after the change');
  expect(await waitFor(async () => (await imageStatus(again, BOOT)).prefetch?.state === 'done', 30_000)).toBe(true);
  const warm = await imageStatus(again, BOOT);
  expect(warm.prefetch).toEqual({ done: 3, total: 3, fetched: 3, state: 'done' });
  for (const g of trace) expectBytes(await readRange(path.join(again.mnt, BOOT), g * MiB, 8192), BOOT_DATA.subarray(g * MiB, g * MiB + 8192), `warm read of grain ${g}`);
  const after = await imageStatus(again, BOOT);
  expect({ misses: after.counters.misses, bytesDown: after.bytesDown }).toEqual({ misses: warm.counters.misses, bytesDown: warm.bytesDown });
  await again.stop();
});
