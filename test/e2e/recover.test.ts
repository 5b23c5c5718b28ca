/* End to end: `blobdisk recover` on images whose local changes cannot go to Azure. A mount
 * is killed while it holds changes not yet uploaded; meanwhile another writer changes the
 * blob (its lease broken first, as another host would after the lease ran out) or deletes
 * it; the next mount on the same cache finds the image in conflict, and its unmount would
 * exit 3. `recover --to` saves the local version as a new blob (checked by SDK download),
 * `--discard` drops it; either way the image then reads as Azure's blob and unmount exits 0.
 * Needs root, /dev/fuse and libfuse2. */

import type { ContainerClient } from '@azure/storage-blob';
import path from 'node:path';
import { startAzurite, type RunningAzurite } from '../../lib/azurite';
import { isMounted, randomData, removeTempDirs, runCli, sh, stopAllMounts, uploadBlockBlob, uploadPageBlob, within, type RunningMount } from '../support/mount';
import { MiB, containerOn, ddWrite, expectBytes, freshCacheDir, imageStatus, mountOn, ok, patched, readAll, readRange, sdkDownload, unmountClean } from '../support/write-helpers';

const CONTAINER = 'recover';
/** Changes stay dirty: nothing is uploaded before the kill. */
const HOLD = ['--write-back-delay', '600', '--grain-size', '1M'];

let azurite: RunningAzurite;
let container: ContainerClient;

beforeAll(async () => {
  azurite = await startAzurite({ inMemory: true });
  container = await containerOn(azurite.connectionString, CONTAINER);
});

afterAll(async () => {
  await stopAllMounts();
  await azurite?.stop();
  await removeTempDirs();
});

/** Kills the mount (SIGKILL: its changes stay dirty in the cache) and clears the dead mount. */
async function kill(mount: RunningMount): Promise<void> {
  mount.child.kill('SIGKILL');
  await within(mount.exited, 10_000, undefined);
  await sh('fusermount', ['-u', mount.mnt]);
  if (await isMounted(mount.mnt)) await sh('fusermount', ['-uz', mount.mnt]);
  await mount.stop();
}

function recover(mount: RunningMount, ...args: string[]): Promise<{ code: number | null; stderr: string }> {
  return runCli(['recover', mount.mnt, ...args], { timeoutMs: 90_000 });
}

test('a blob another writer changed: recover --to saves the local version as a new blob, the image follows Azure, unmount exits 0', async () => {
  const NAME = 'changed.img';
  const base = randomData(4 * MiB);
  await uploadPageBlob(container, NAME, base.length, [{ offset: 0, data: base }]);
  const cacheDir = await freshCacheDir();
  const first = await mountOn(azurite.connectionString, CONTAINER, cacheDir, HOLD);
  const file = path.join(first.mnt, NAME);
  // Grain 0 is read (cached, clean); grain 1 is written (dirty, fsynced to the cache). The
  // read is direct, one request: no read-ahead (the kernel's or blobdisk's) caches more.
  expectBytes(await readRange(file, 0, MiB, { direct: true }), base.subarray(0, MiB), 'grain 0 before');
  const local = randomData(MiB);
  const w = await ddWrite(file, MiB, local, { conv: ['fsync'] });
  expect({ code: w.code, stderr: w.stderr }).toEqual({ code: 0, stderr: '' });
  expect((await first.status()).dirtyBytes).toBe(MiB);
  await kill(first);

  // Another writer changes grains 0 and 3 in Azure.
  const blob = container.getPageBlobClient(NAME);
  await blob.getBlobLeaseClient().breakLease(0);
  const foreign = randomData(MiB);
  await blob.uploadPages(foreign, 0, MiB);
  await blob.uploadPages(foreign, 3 * MiB, MiB);
  const azureVersion = patched(patched(base, 0, foreign), 3 * MiB, foreign);

  const second = await mountOn(azurite.connectionString, CONTAINER, cacheDir, HOLD, { mnt: first.mnt });
  expect(second.stderr()).toMatch(/recover\/changed\.img holds data not yet uploaded, but cannot be opened \(conflict/);
  expect((await imageStatus(second, NAME)).conflict).toMatch(/changed in Azure/);

  const r = await recover(second, NAME, '--to', 'changed-local.img');
  expect({ code: r.code, stderr: r.stderr }).toEqual({
    code: 0,
    stderr: `blobdisk: saved the local version of ${NAME} (1 MiB not yet in Azure) as changed-local.img in the same container; ${NAME} now shows Azure's version\n`,
  });
  // The local version: the old grain 0 (only the cache still had it), our grain 1, and
  // Azure's bytes where the cache held nothing (grain 2 unchanged, grain 3 the other writer's).
  expectBytes(await sdkDownload(container, 'changed-local.img'), patched(patched(base, MiB, local), 3 * MiB, foreign), 'the saved local version');
  expectBytes(await sdkDownload(container, NAME), azureVersion, `${NAME} in Azure, untouched`);
  const after = await imageStatus(second, NAME);
  expect({ conflict: after.conflict, dirty: after.dirtyBytes }).toEqual({ conflict: null, dirty: 0 });
  expectBytes(await readAll(path.join(second.mnt, NAME)), azureVersion, `${NAME} through the mount`);
  expectBytes(await readAll(path.join(second.mnt, 'changed-local.img')), patched(patched(base, MiB, local), 3 * MiB, foreign), 'the saved version through the mount');

  // Nothing left to recover; the image is writable again.
  const again = await recover(second, NAME, '--discard');
  expect({ code: again.code, stderr: again.stderr }).toEqual({ code: 0, stderr: `blobdisk: ${NAME} has no local changes and no conflict: nothing to recover\n` });
  ok(await ddWrite(path.join(second.mnt, NAME), 2 * MiB, local, { conv: ['fsync'] }), 'a write after recover');
  await unmountClean(second);
  expectBytes(await sdkDownload(container, NAME), patched(azureVersion, 2 * MiB, local), `${NAME} after the new write`);
}, 180_000);

test('a block blob another writer replaced: --discard drops the local changes; clear errors for a missing image, a name that exists, no mount', async () => {
  const NAME = 'notes.bin';
  const base = await uploadBlockBlob(container, NAME, [randomData(MiB), randomData(MiB)]);
  const cacheDir = await freshCacheDir();
  const first = await mountOn(azurite.connectionString, CONTAINER, cacheDir, HOLD);
  ok(await ddWrite(path.join(first.mnt, NAME), 512 * 1024, randomData(64 * 1024), { conv: ['fsync'] }), 'dd');
  await kill(first);
  await container.getBlobClient(NAME).getBlobLeaseClient().breakLease(0);
  const theirs = await uploadBlockBlob(container, NAME, [randomData(3 * MiB)]);
  expect(theirs.equals(base)).toBe(false);

  const second = await mountOn(azurite.connectionString, CONTAINER, cacheDir, HOLD, { mnt: first.mnt });
  expect((await imageStatus(second, NAME)).conflict).toMatch(/changed in Azure/);

  const missing = await recover(second, 'nope.img', '--discard');
  expect({ code: missing.code, stderr: missing.stderr }).toEqual({ code: 1, stderr: 'blobdisk: recover of nope.img failed: no image recover/nope.img in Azure or in the cache\n' });
  await uploadPageBlob(container, 'taken.img', 512);
  const taken = await recover(second, NAME, '--to', 'taken.img');
  expect({ code: taken.code, stderr: taken.stderr }).toEqual({ code: 1, stderr: 'blobdisk: recover of notes.bin failed: recover/taken.img exists already; pick another name for --to\n' });
  const both = await recover(second, NAME);
  expect(both.code).toBe(2);
  expect(both.stderr).toMatch(/^blobdisk: give either --to <new-name> .* or --discard/);
  expect((await imageStatus(second, NAME)).conflict).toMatch(/changed in Azure/);

  const r = await recover(second, path.join(second.mnt, NAME), '--discard');
  expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: `blobdisk: dropped the local changes of ${NAME} (64 KiB not yet in Azure); ${NAME} now shows Azure's version\n` });
  expectBytes(await readAll(path.join(second.mnt, NAME)), theirs, `${NAME} through the mount`);
  await unmountClean(second);
  expectBytes(await sdkDownload(container, NAME), theirs, `${NAME} in Azure`);

  const none = await runCli(['recover', second.mnt, NAME, '--discard']);
  expect({ code: none.code, stderr: none.stderr }).toEqual({ code: 1, stderr: `blobdisk: no blobdisk mount answers at ${second.mnt}; is it mounted?\n` });
}, 180_000);

test('a blob deleted in Azure: recover --to saves what the cache holds, and the image is gone', async () => {
  const NAME = 'gone.img';
  const cacheDir = await freshCacheDir();
  const first = await mountOn(azurite.connectionString, CONTAINER, cacheDir, HOLD);
  const file = path.join(first.mnt, NAME);
  ok(await sh('truncate', ['-s', '3M', file]), 'truncate');
  const local = randomData(MiB);
  ok(await ddWrite(file, MiB, local, { conv: ['fsync'] }), 'dd');
  await kill(first);
  await container.getBlobClient(NAME).getBlobLeaseClient().breakLease(0);
  await container.getBlobClient(NAME).delete();

  const second = await mountOn(azurite.connectionString, CONTAINER, cacheDir, HOLD, { mnt: first.mnt });
  expect(second.stderr()).toMatch(/recover\/gone\.img holds data not yet uploaded, but cannot be opened .*; it stays in the cache until blobdisk recover /);
  const shown = await runCli(['status', second.mnt]);
  expect(shown.stdout).toContain('recover/gone.img holds data not yet uploaded but cannot be opened: see blobdisk recover --help');
  const r = await recover(second, NAME, '--to', 'gone-saved.img');
  expect({ code: r.code, stderr: r.stderr }).toEqual({
    code: 0,
    stderr: `blobdisk: saved the local version of ${NAME} (1 MiB not yet in Azure) as gone-saved.img in the same container; ${NAME} no longer exists in Azure and is gone from the mount\n`,
  });
  expectBytes(await sdkDownload(container, 'gone-saved.img'), patched(Buffer.alloc(3 * MiB), MiB, local), 'the saved local version');
  expect((await second.status()).unopened).toEqual([]);
  await unmountClean(second);
}, 120_000);
