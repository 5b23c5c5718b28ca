/* End to end: Azure that accepts connections and never answers (the fault proxy's hang,
 * as in a network partition), under a real mount. An uncached read must fail with EIO within
 * about --io-timeout (default 30 s) instead of hanging; a cached read, also through a new
 * open, must not wait on Azure at all; once Azure answers again the same read returns the
 * right bytes and the mount unmounts cleanly. Needs root, /dev/fuse and libfuse3.
 *
 * Before bounded waits, with the proxy hanging every request, a cached read of 1 MiB through
 * a new open took 126 s (exit 0) in one run and was still hanging when killed in another
 * (SIGTERM at 150 s, gone only at 252 s); an uncached read was still hanging when killed at
 * 150 s; with the proxy stopping mid-body, the cached read through a new open ended only
 * after 378 s. */

import type { ContainerClient } from '@azure/storage-blob';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { startAzurite, type RunningAzurite } from '../../lib/azurite';
import { FaultProxy } from '../support/fault-proxy';
import { randomData, removeTempDirs, sh, stopAllMounts, uploadPageBlob, waitFor, type RunningMount } from '../support/mount';
import { MiB, containerOn, expectBytes, freshCacheDir, mountOn, readRange, scratchFile, unmountClean } from '../support/write-helpers';

const CONTAINER = 'hang';
const NAME = 'hang.img';
const DATA = randomData(16 * MiB);
/** The documented default of --io-timeout. */
const IO_TIMEOUT_MS = 30_000;
/** How long past the bound a failing read may still take on a busy machine. */
const MARGIN_MS = 20_000;

let azurite: RunningAzurite;
let proxy: FaultProxy;
let container: ContainerClient;
let mount: RunningMount;

beforeAll(async () => {
  azurite = await startAzurite({ inMemory: true, host: '127.0.0.1' });
  proxy = await FaultProxy.start({ port: azurite.port });
  container = await containerOn(azurite.connectionString, CONTAINER);
  await uploadPageBlob(container, NAME, DATA.length, [{ offset: 0, data: DATA }]);
  mount = await mountOn(proxy.connectionString(azurite.connectionString), CONTAINER, await freshCacheDir(), ['--dir-cache-time', '1', '--read-ahead', '1M']);
  // The first 2 MiB are cached before Azure stops answering.
  expectBytes(await readRange(path.join(mount.mnt, NAME), 0, 2 * MiB), DATA.subarray(0, 2 * MiB), 'the first 2 MiB');
});

afterAll(async () => {
  proxy?.remove();
  proxy?.releaseHangs();
  await stopAllMounts();
  await proxy?.close();
  await azurite?.stop();
  await removeTempDirs();
});

/** dd of [offset, offset + length) through a new open; never throws. */
async function timedRead(offset: number, length: number): Promise<{ code: number | null; stderr: string; ms: number; data: Buffer }> {
  const out = await scratchFile('hang-read');
  const t0 = Date.now();
  const r = await sh('dd', [`if=${path.join(mount.mnt, NAME)}`, `of=${out}`, `bs=${MiB}`, `skip=${offset}`, `count=${length}`, 'iflag=skip_bytes,count_bytes', 'status=none'], { timeoutMs: 150_000 });
  const ms = Date.now() - t0;
  const data = await fsp.readFile(out).catch(() => Buffer.alloc(0));
  return { code: r.code, stderr: r.stderr, ms, data };
}

test.each([
  ['never answers', { kind: 'hang' } as const, 4 * MiB],
  ['stops mid-body', { kind: 'hang', midBody: true, afterBytes: 64 * 1024 } as const, 8 * MiB],
])('while Azure %s: an uncached read fails with EIO within the I/O timeout, a cached one does not wait', async (_what, action, offset) => {
  const rule = proxy.add({ path: `/${CONTAINER}`, action });
  try {
    // Both reads are measured before anything is asserted, so a failure reports both times.
    const cached = await timedRead(0, MiB);
    console.log(`cached read through a new open while Azure ${_what}: exit ${cached.code} after ${cached.ms} ms: ${cached.stderr.trim()}`);
    const uncached = await timedRead(offset, MiB);
    console.log(`uncached read while Azure ${_what}: exit ${uncached.code} after ${uncached.ms} ms: ${uncached.stderr.trim()}`);
    expect({ code: cached.code, stderr: cached.stderr }).toEqual({ code: 0, stderr: '' });
    expectBytes(cached.data, DATA.subarray(0, MiB), 'a cached read while Azure hangs');
    expect(cached.ms).toBeLessThan(5_000);
    expect(uncached.code).not.toBe(0);
    expect(uncached.stderr).toMatch(/Input\/output error/);
    expect(uncached.ms).toBeLessThan(IO_TIMEOUT_MS + MARGIN_MS);
    expect(rule.hits).toBeGreaterThan(0);
  } finally {
    proxy.remove(rule);
    proxy.releaseHangs();
  }
  // Azure answers again: the same range reads right (a range whose read just failed fails
  // again at once for a second, so the kernel's immediate re-read does not wait once more).
  let after = await timedRead(offset, MiB);
  await waitFor(async () => after.code === 0 || ((after = await timedRead(offset, MiB)), after.code === 0), 15_000, 250);
  expect({ code: after.code, stderr: after.stderr }).toEqual({ code: 0, stderr: '' });
  expectBytes(after.data, DATA.subarray(offset, offset + MiB), 'the range once Azure answers');
}, 420_000);

test('the mount unmounts cleanly afterwards', async () => {
  await unmountClean(mount);
});
