/* End to end: a mount that reaches Azurite through the fault proxy (test/support/fault-proxy.ts)
 * while the proxy delays requests, resets connections mid-body, answers 503 ServerBusy with
 * Retry-After or 500, or truncates response bodies — on ranged GETs of data not cached (page
 * and block blobs) and on uploads (Put Page; Put Block and Put Block List). For each fault:
 * no wrong byte is served (reads compared with what was uploaded), the read or the flush
 * ends within a generous bound, and the upload drains (after `blobdisk flush` a direct SDK
 * download equals what was written). Then a second mount on the same cache directory,
 * straight on Azurite, serves every file identically without a checksum warning: nothing
 * torn was cached. Needs root, /dev/fuse and libfuse3. */

import type { ContainerClient } from '@azure/storage-blob';
import path from 'node:path';
import { startAzurite, type RunningAzurite } from '../../lib/azurite';
import { FaultProxy, type FaultAction } from '../support/fault-proxy';
import { randomData, removeTempDirs, stopAllMounts, uploadBlockBlob, uploadPageBlob, type RunningMount } from '../support/mount';
import {
  MiB,
  containerOn,
  ddWrite,
  expectBytes,
  flushCli,
  freshCacheDir,
  mountOn,
  patched,
  readAll,
  sdkDownload,
  unmountClean,
} from '../support/write-helpers';

const CONTAINER = 'faults';
/** Each fault twice in a row: the first try and the SDK's first retry both meet it. */
const TIMES = 2;
/** A faulted read or flush must end well within this (the SDK retries after 0.2–2 s, the
 *  flusher after 0.5 s; Retry-After is 1 s). A bound, not a benchmark: the machine is shared. */
const BOUND_MS = 45_000;

const FAULTS: Record<string, FaultAction> = {
  delay: { kind: 'delay', ms: 1500 },
  reset: { kind: 'reset', afterBytes: 100_000 },
  busy: { kind: 'busy', retryAfterSeconds: 1 },
  error500: { kind: 'error500' },
  truncate: { kind: 'truncate', keepBytes: 300_000 },
};
const KINDS = Object.keys(FAULTS);

let azurite: RunningAzurite;
let proxy: FaultProxy;
let container: ContainerClient;
/** What every file must hold, by name. */
const expected = new Map<string, Buffer>();
const timings: string[] = [];
let cache: string;
let mount: RunningMount;

beforeAll(async () => {
  azurite = await startAzurite({ inMemory: true, host: '127.0.0.1' });
  proxy = await FaultProxy.start({ port: azurite.port });
  container = await containerOn(azurite.connectionString, CONTAINER);
  for (const kind of KINDS) {
    const page = randomData(6 * MiB);
    await uploadPageBlob(container, `read-${kind}.img`, 8 * MiB, [{ offset: MiB, data: page }]);
    expected.set(`read-${kind}.img`, patched(Buffer.alloc(8 * MiB), MiB, page));
    expected.set(`read-${kind}.bin`, await uploadBlockBlob(container, `read-${kind}.bin`, [randomData(MiB + 77), randomData(3 * MiB)]));
    await uploadPageBlob(container, `up-${kind}.img`, 4 * MiB);
    expected.set(`up-${kind}.img`, Buffer.alloc(4 * MiB));
  }
  cache = await freshCacheDir();
  mount = await mountOn(proxy.connectionString(azurite.connectionString), CONTAINER, cache, ['--write-back-delay', '0.1', '--dir-cache-time', '1']);
});

afterAll(async () => {
  if (timings.length > 0) console.log(`fault timings:\n  ${timings.join('\n  ')}`);
  await stopAllMounts();
  await proxy?.close();
  await azurite?.stop();
  await removeTempDirs();
});

describe.each(KINDS)('%s', (kind) => {
  const action = FAULTS[kind] as FaultAction;

  test.each(['img', 'bin'])(`an uncached read of a .%s blob meets ${kind} and still gets every byte right`, async (ext) => {
    const name = `read-${kind}.${ext}`;
    // Data GETs only (no comp=): the page-range listing of a page blob is a ranged GET too.
    const rule = proxy.add({ method: 'GET', path: `/${CONTAINER}/${name}`, query: null, range: true, times: TIMES, action });
    try {
      const t0 = Date.now();
      const got = await readAll(path.join(mount.mnt, name));
      const ms = Date.now() - t0;
      const gets = proxy.seen({ path: name, method: 'GET', query: null }).filter((r) => r.at >= t0);
      const gaps = gets.slice(1).map((r, i) => r.at - (gets[i] as { at: number }).at);
      timings.push(`read ${name} with ${kind}: ${ms} ms (${rule.hits} faulted of ${gets.length} GETs; ms between GETs: ${gaps.join(', ')})`);
      expect(rule.hits).toBeGreaterThan(0);
      expectBytes(got, expected.get(name) as Buffer, `${name} read through ${kind}`);
      expect(ms).toBeLessThan(BOUND_MS);
      // Read again, now from the cache: the same bytes.
      expectBytes(await readAll(path.join(mount.mnt, name)), expected.get(name) as Buffer, `${name} read again`);
    } finally {
      proxy.remove(rule);
    }
  });

  test.each([
    ['img', 'comp=page'],
    ['bin', 'comp=block'],
  ])(`an upload to a .%s blob (%s) meets ${kind} and drains completely`, async (ext, query) => {
    const name = `up-${kind}.${ext}`;
    // Put Block and Put Block List both match comp=block.
    const rule = proxy.add({ method: 'PUT', path: `/${CONTAINER}/${name}`, query, times: TIMES, action });
    try {
      const data = randomData(2 * MiB + 512 * 5);
      const offset = MiB - 512 * 3;
      const w = await ddWrite(path.join(mount.mnt, name), offset, data);
      expect({ code: w.code, stderr: w.stderr }).toEqual({ code: 0, stderr: '' });
      expected.set(name, patched(expected.get(name) ?? Buffer.alloc(0), offset, data));
      const t0 = Date.now();
      const f = await flushCli(mount);
      const ms = Date.now() - t0;
      timings.push(`flush of ${name} with ${kind}: ${ms} ms (${rule.hits} faulted of ${proxy.seen({ path: name, method: 'PUT', query }).length} uploads)`);
      expect({ code: f.code, stderr: f.code === 0 ? '' : f.stderr }).toEqual({ code: 0, stderr: '' });
      expect(rule.hits).toBeGreaterThan(0);
      expect(ms).toBeLessThan(BOUND_MS);
      expectBytes(await sdkDownload(container, name), expected.get(name) as Buffer, `${name} in Azure after the flush`);
    } finally {
      proxy.remove(rule);
    }
  });
});

test('a second mount on the same cache dir serves every file identically, with no checksum warning', async () => {
  expect((await mount.status()).dirtyBytes).toBe(0);
  const firstLog = mount.stderr();
  await unmountClean(mount);
  expect(firstLog).not.toMatch(/checksum/i);
  // Through the proxy again, without faults, to count what the second mount fetches.
  const t0 = Date.now();
  const again = await mountOn(proxy.connectionString(azurite.connectionString), CONTAINER, cache, ['--dir-cache-time', '1']);
  for (const [name, bytes] of expected) {
    expectBytes(await readAll(path.join(again.mnt, name)), bytes, `${name} through the second mount`);
    expectBytes(await sdkDownload(container, name), bytes, `${name} in Azure`);
  }
  // The files read whole by the first mount are served from its cache: no data GET for them.
  const fetched = proxy.seen({ method: 'GET', range: true, query: null }).filter((r) => r.at >= t0);
  timings.push(`second mount fetched: ${fetched.map((r) => `${r.path.split('/').pop()} ${r.range}`).join(', ')}`);
  expect(fetched.filter((r) => r.path.includes('/read-')).map((r) => `${r.path} ${r.range}`)).toEqual([]);
  const log = again.stderr();
  await unmountClean(again);
  expect(log).not.toMatch(/checksum/i);
});
