/* End to end: data a killed mount left dirty for a blob that is gone by the next mount. The
 * next mount cannot open that image (said in the log); its unmount then must not claim that
 * everything is in Azure: it exits 3 and names the image, and the data stays in the cache.
 * Needs root and /dev/fuse. */

import type { ContainerClient } from '@azure/storage-blob';
import path from 'node:path';
import { startAzurite, type RunningAzurite } from '../../lib/azurite';
import { forceUnmount, removeTempDirs, sh, stopAllMounts, within } from '../support/mount';
import { containerOn, freshCacheDir, mountOn, ok } from '../support/write-helpers';

const CONTAINER = 'recovery';

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

it('an unmount with dirty data of an image that could not be opened exits 3 and names it', async () => {
  const cacheDir = await freshCacheDir();
  const first = await mountOn(azurite.connectionString, CONTAINER, cacheDir, ['--write-back-delay', '600']);
  const file = path.join(first.mnt, 'gone.img');
  ok(await sh('truncate', ['-s', '1M', file]), 'truncate');
  ok(await sh('dd', ['if=/dev/urandom', `of=${file}`, 'bs=64K', 'count=4', 'conv=notrunc,fsync', 'status=none']), 'dd');
  expect((await first.status()).dirtyBytes).toBeGreaterThan(0);
  first.child.kill('SIGKILL');
  await within(first.exited, 10_000, undefined);
  await forceUnmount(first.mnt);
  await first.stop();

  // Meanwhile the blob is deleted in Azure (its lease broken first, as another host would).
  await container.getBlobClient('gone.img').getBlobLeaseClient().breakLease(0);
  await container.getBlobClient('gone.img').delete();

  const second = await mountOn(azurite.connectionString, CONTAINER, cacheDir, [], { mnt: first.mnt });
  expect(second.stderr()).toMatch(/recovery\/gone\.img holds data not yet uploaded, but cannot be opened/);
  const stopped = await second.stop();
  expect(stopped.code).toBe(3);
  expect(stopped.stderr).toMatch(/blobdisk: unmounted .*, but 1 MiB could not be uploaded \(recovery\/gone\.img could not be opened\); it stays in /);
});
