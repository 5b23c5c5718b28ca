/* End to end: an Azure outage of five minutes under a real mount (Azurite frozen with
 * SIGSTOP, so connections hang as in a network partition), with 15 s leases that run out
 * meanwhile. Writes of cached and new data keep landing, fsync included, while the cache has
 * room; a write beyond the room fails with ENOSPC after --io-timeout instead of hanging;
 * `blobdisk status` says since when Azure is unreachable and how much waits. After SIGCONT
 * the lease is retaken (If-Match on the ETag we knew, in the same request), everything
 * drains, and Azure holds every acknowledged byte. Then: a lease that ran out while the
 * mount was dead is no conflict when nobody changed the blob, and is one when somebody did.
 * Needs root, /dev/fuse and libfuse2. */

import type { ContainerClient } from '@azure/storage-blob';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { startAzurite, type RunningAzurite } from '../../lib/azurite';
import { cliEnv, isMounted, makeTempDir, randomData, removeTempDirs, runCli, sh, sleep, stopAllMounts, uploadPageBlob, waitFor, within, type RunningMount } from '../support/mount';
import { MiB, containerOn, ddWrite, expectBytes, flushCli, freshCacheDir, imageStatus, mountOn, patched, readRange, sdkDownload, unmountClean } from '../support/write-helpers';

const CONTAINER = 'outage';
const LEASE_SECONDS = 15;
const IO_TIMEOUT_S = 5;
const OUTAGE_MS = Number(process.env.OUTAGE_MS ?? 300_000);
const FLAGS = ['--cache-size', '8M', '--grain-size', '1M', '--io-timeout', String(IO_TIMEOUT_S), '--drain-timeout', '30'];

let azurite: RunningAzurite;
let container: ContainerClient;
let frozen = false;

async function env(): Promise<NodeJS.ProcessEnv> {
  return cliEnv({ BLOBDISK_LEASE_SECONDS: String(LEASE_SECONDS) }, await makeTempDir('blobdisk-home-'));
}

function freeze(): void {
  process.kill(azurite.pid, 'SIGSTOP');
  frozen = true;
}
function thaw(): void {
  if (frozen) process.kill(azurite.pid, 'SIGCONT');
  frozen = false;
}

beforeAll(async () => {
  azurite = await startAzurite({ inMemory: true, host: '127.0.0.1' });
  container = await containerOn(azurite.connectionString, CONTAINER);
});

afterAll(async () => {
  thaw();
  await stopAllMounts();
  await azurite?.stop();
  await removeTempDirs();
});

/** dd of `data` at `offset` with fsync; its time and result, never throws. */
async function timedWrite(file: string, offset: number, data: Buffer, timeoutMs = 120_000): Promise<{ code: number | null; stderr: string; ms: number }> {
  const t0 = Date.now();
  const r = await ddWrite(file, offset, data, { conv: ['fsync'], timeoutMs });
  return { code: r.code, stderr: r.stderr, ms: Date.now() - t0 };
}

test('five minutes without Azure: writes land until the cache is full, then ENOSPC; status says so; afterwards the lease is retaken and everything drains', async () => {
  const NAME = 'vm.img';
  const SIZE = 16 * MiB;
  let want = randomData(SIZE);
  await uploadPageBlob(container, NAME, SIZE, [{ offset: 0, data: want }]);
  const mount = await mountOn(azurite.connectionString, CONTAINER, await freshCacheDir(), FLAGS, { env: await env() });
  const file = path.join(mount.mnt, NAME);
  // Azure up: grains 0 and 1 are read (cached), grain 2 written and uploaded (leased).
  expectBytes(await readRange(file, 0, 2 * MiB), want.subarray(0, 2 * MiB), 'grains 0-1');
  const up = randomData(MiB);
  const w = await timedWrite(file, 2 * MiB, up);
  expect({ code: w.code, stderr: w.stderr }).toEqual({ code: 0, stderr: '' });
  want = patched(want, 2 * MiB, up);
  expect((await flushCli(mount)).code).toBe(0);
  expect((await imageStatus(mount, NAME)).lease).toBe('held');

  freeze();
  const frozenAt = Date.now();
  try {
    // Cached grains (0-2) and new ones (3-4) are written, each write with fsync, ahead of the
    // leases running out and after: none waits on Azure.
    const writes: { offset: number; ms: number }[] = [];
    for (const offset of [0, 3 * MiB, MiB, 4 * MiB, 2 * MiB]) {
      const data = randomData(MiB);
      const r = await timedWrite(file, offset, data);
      expect({ offset, code: r.code, stderr: r.stderr }).toEqual({ offset, code: 0, stderr: '' });
      writes.push({ offset, ms: r.ms });
      want = patched(want, offset, data);
      if (offset === 3 * MiB) await sleep((LEASE_SECONDS + 2) * 1000); // the lease runs out
    }
    console.log(`writes while Azure is frozen (offset, ms): ${writes.map((x) => `${x.offset / MiB}M ${x.ms}`).join(', ')}`);
    for (const x of writes) expect(x.ms).toBeLessThan(10_000);
    expectBytes(await readRange(file, 0, 5 * MiB), want.subarray(0, 5 * MiB), 'what was written, read back while Azure is frozen');

    // status: unreachable, with the backlog.
    expect(await waitFor(async () => (await mount.status()).azureUnreachableSince !== null, 60_000, 1000)).toBe(true);
    const text = await runCli(['status', mount.mnt], { timeoutMs: 30_000 });
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/Azure unreachable since \d{4}-\d\d-\d\dT[\d:.]+Z \(\d+ s\); 5 MiB wait in the cache for it/);

    // 5 grains dirty in a cache of 8: a write of 8 more gets room for 3 and then ENOSPC,
    // after about --io-timeout.
    const tooMuch = randomData(8 * MiB);
    const src = path.join(await makeTempDir('blobdisk-src-'), 'too-much');
    await fsp.writeFile(src, tooMuch);
    const t0 = Date.now();
    const full = await sh('dd', [`if=${src}`, `of=${file}`, 'bs=1M', `seek=${5 * MiB}`, 'oflag=seek_bytes', 'conv=notrunc,fsync'], { timeoutMs: 120_000 });
    const fullMs = Date.now() - t0;
    console.log(`write beyond the cache while Azure is frozen: exit ${full.code} after ${fullMs} ms: ${full.stderr.trim().split('\n').join(' | ')}`);
    expect(full.code).not.toBe(0);
    expect(full.stderr).toMatch(/No space left on device/);
    expect(fullMs).toBeGreaterThan((IO_TIMEOUT_S - 1) * 1000);
    expect(fullMs).toBeLessThan(IO_TIMEOUT_S * 1000 + 30_000);
    const copied = Number(/^(\d+) bytes/m.exec(full.stderr)?.[1] ?? NaN);
    expect(copied).toBeGreaterThanOrEqual(MiB);
    expect(copied).toBeLessThanOrEqual(3 * MiB);
    want = patched(want, 5 * MiB, tooMuch.subarray(0, copied));
    const status = await mount.status();
    expect(status.dirtyBytes).toBe(5 * MiB + copied);
    expect(status.images.find((i) => i.path === NAME)?.conflict ?? null).toBeNull();

    // The rest of the outage.
    await sleep(Math.max(0, OUTAGE_MS - (Date.now() - frozenAt)));
  } finally {
    thaw();
  }
  console.log(`Azure was frozen for ${Math.round((Date.now() - frozenAt) / 1000)} s`);

  // Azure is back: the lease that ran out is retaken (the ETag is unchanged), nothing is a
  // conflict, and everything drains.
  const flush = await runCli(['flush', mount.mnt, '--timeout', '60'], { timeoutMs: 120_000 });
  expect({ code: flush.code, stderr: flush.code === 0 ? '' : `${flush.stderr}\n${mount.stderr().split('\n').slice(-10).join('\n')}` }).toEqual({ code: 0, stderr: '' });
  const after = await imageStatus(mount, NAME);
  expect({ conflict: after.conflict, dirty: after.dirtyBytes, lease: after.lease }).toEqual({ conflict: null, dirty: 0, lease: 'held' });
  expect((await mount.status()).azureUnreachableSince).toBeNull();
  expectBytes(await sdkDownload(container, NAME), want, `${NAME} in Azure after the outage`);
  await unmountClean(mount);
}, 480_000);

describe('a lease that ran out while the mount was dead', () => {
  /** Writes through a mount, kills it (its changes stay dirty), waits until the lease ran out. */
  async function killedWithChanges(name: string): Promise<{ cacheDir: string; mnt: string; base: Buffer; local: Buffer }> {
    const base = randomData(2 * MiB);
    await uploadPageBlob(container, name, base.length, [{ offset: 0, data: base }]);
    const cacheDir = await freshCacheDir();
    const mount = await mountOn(azurite.connectionString, CONTAINER, cacheDir, [...FLAGS, '--write-back-delay', '600'], { env: await env() });
    const local = randomData(MiB);
    const w = await timedWrite(path.join(mount.mnt, name), MiB, local);
    expect({ code: w.code, stderr: w.stderr }).toEqual({ code: 0, stderr: '' });
    mount.child.kill('SIGKILL');
    await within(mount.exited, 10_000, undefined);
    await sh('fusermount', ['-u', mount.mnt]);
    if (await isMounted(mount.mnt)) await sh('fusermount', ['-uz', mount.mnt]);
    await mount.stop();
    await sleep((LEASE_SECONDS + 3) * 1000);
    expect((await container.getBlobClient(name).getProperties()).leaseState).toBe('expired');
    return { cacheDir, mnt: mount.mnt, base, local };
  }

  async function remount(cacheDir: string, mnt: string): Promise<RunningMount> {
    return mountOn(azurite.connectionString, CONTAINER, cacheDir, FLAGS, { mnt, env: await env() });
  }

  test('nobody changed the blob: no conflict, the changes go up', async () => {
    const { cacheDir, mnt, base, local } = await killedWithChanges('kept.img');
    const mount = await remount(cacheDir, mnt);
    expect(mount.stderr()).not.toMatch(/cannot be opened|conflict/i);
    expect((await flushCli(mount)).code).toBe(0);
    await unmountClean(mount);
    expectBytes(await sdkDownload(container, 'kept.img'), patched(base, MiB, local), 'kept.img in Azure');
  }, 120_000);

  test('another writer changed it: a conflict; recover --to saves the local version, the image shows Azure, unmount exits 0', async () => {
    const { cacheDir, mnt, base, local } = await killedWithChanges('taken.img');
    const theirs = randomData(512 * 1024);
    await container.getPageBlobClient('taken.img').uploadPages(theirs, 0, theirs.length);
    const azureVersion = patched(base, 0, theirs);
    const mount = await remount(cacheDir, mnt);
    expect((await imageStatus(mount, 'taken.img')).conflict).toMatch(/changed in Azure/);
    const r = await runCli(['recover', mount.mnt, 'taken.img', '--to', 'taken-local.img'], { timeoutMs: 60_000 });
    expect({ code: r.code, stderr: r.stderr }).toEqual({
      code: 0,
      stderr: "blobdisk: saved the local version of taken.img (1 MiB not yet in Azure) as taken-local.img in the same container; taken.img now shows Azure's version\n",
    });
    // Grain 0 was never cached here: the saved version has the other writer's bytes there.
    expectBytes(await sdkDownload(container, 'taken-local.img'), patched(azureVersion, MiB, local), 'the saved local version');
    expectBytes(await sdkDownload(container, 'taken.img'), azureVersion, 'taken.img in Azure');
    await unmountClean(mount);
  }, 120_000);
});
