/* End to end: a mount with --metrics-addr serves Prometheus text while a workload runs, and
 * the counters move with it: requests by operation, bytes up and down, hits and misses,
 * dirty bytes and the lease of an image open for writing. `status --watch` redraws the
 * same mount's table until Ctrl-C. Needs root and /dev/fuse. */

import type { ContainerClient } from '@azure/storage-blob';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { startAzurite, type RunningAzurite } from '../../lib/azurite';
import { CLI, closedPort, removeTempDirs, sh, stopAllMounts, waitFor, type RunningMount } from '../support/mount';
import { containerOn, flushCli, freshCacheDir, mountOn, ok, unmountClean } from '../support/write-helpers';

const CONTAINER = 'metrics';

let azurite: RunningAzurite;
let container: ContainerClient;
let mount: RunningMount;
let url: string;

/** The samples of one scrape, by their full name with labels. */
async function scrape(): Promise<Map<string, number>> {
  const res = await fetch(url);
  expect(res.status).toBe(200);
  const out = new Map<string, number>();
  for (const line of (await res.text()).split('\n')) {
    const m = /^([a-z_]+(?:\{[^}]*\})?) (\S+)$/.exec(line);
    if (m?.[1] !== undefined && m[2] !== undefined) out.set(m[1], Number(m[2]));
  }
  return out;
}

const value = (s: Map<string, number>, name: string): number => s.get(name) ?? 0;

beforeAll(async () => {
  azurite = await startAzurite({ inMemory: true });
  container = await containerOn(azurite.connectionString, CONTAINER);
  await container.getPageBlobClient('outside.img').create(4 * 1024 * 1024);
  await container.getPageBlobClient('outside.img').uploadPages(Buffer.alloc(1024 * 1024, 7), 0, 1024 * 1024);
  const port = await closedPort();
  url = `http://127.0.0.1:${port}/metrics`;
  mount = await mountOn(azurite.connectionString, CONTAINER, await freshCacheDir(), ['--metrics-addr', `127.0.0.1:${port}`, '--write-back-delay', '30']);
});

afterAll(async () => {
  await stopAllMounts();
  await azurite?.stop();
  await removeTempDirs();
});

it('counters move with a workload: uploads, downloads, hits, misses, dirty bytes and the lease', async () => {
  const before = await scrape();
  expect(value(before, 'blobdisk_azure_reachable')).toBe(1);
  const image = path.join(mount.mnt, 'w.img');

  // Writes stay dirty (write-back delay 30 s) while the file is open for writing, leased.
  const writer = sh('sh', ['-c', 'dd if=/dev/urandom of="$1" bs=1M count=8 conv=fsync status=none && sleep 3', 'sh', image], { timeoutMs: 60_000 });
  expect(await waitFor(async () => value(await scrape(), 'blobdisk_dirty_bytes') >= 8 * 1024 * 1024, 20_000)).toBe(true);
  const during = await scrape();
  expect(value(during, 'blobdisk_leases{state="held"}')).toBe(1);
  expect(value(during, 'blobdisk_image_dirty_bytes{image="w.img"}')).toBeGreaterThanOrEqual(8 * 1024 * 1024);
  expect(value(during, 'blobdisk_oldest_dirty_seconds')).toBeGreaterThanOrEqual(0);
  ok(await writer, 'dd');

  ok(await flushCli(mount), 'blobdisk flush');
  const flushed = await scrape();
  expect(value(flushed, 'blobdisk_dirty_bytes')).toBe(0);
  expect(value(flushed, 'blobdisk_up_bytes_total') - value(before, 'blobdisk_up_bytes_total')).toBeGreaterThanOrEqual(8 * 1024 * 1024);
  expect(value(flushed, 'blobdisk_azure_requests_total{op="putPages",outcome="ok"}')).toBeGreaterThan(0);
  expect(value(flushed, 'blobdisk_azure_request_duration_seconds_count{op="putPages"}')).toBe(value(flushed, 'blobdisk_azure_requests_total{op="putPages",outcome="ok"}'));

  // A blob written outside: the first read misses and fetches, the second hits.
  const cold = path.join(mount.mnt, 'outside.img');
  ok(await sh('dd', [`if=${cold}`, 'of=/dev/null', 'bs=1M', 'count=1', 'iflag=direct', 'status=none']), 'cold read');
  const afterCold = await scrape();
  expect(value(afterCold, 'blobdisk_cache_misses_total') - value(flushed, 'blobdisk_cache_misses_total')).toBeGreaterThan(0);
  expect(value(afterCold, 'blobdisk_down_bytes_total') - value(flushed, 'blobdisk_down_bytes_total')).toBeGreaterThanOrEqual(1024 * 1024);
  expect(value(afterCold, 'blobdisk_azure_requests_total{op="read",outcome="ok"}')).toBeGreaterThan(0);
  ok(await sh('dd', [`if=${cold}`, 'of=/dev/null', 'bs=1M', 'count=1', 'iflag=direct', 'status=none']), 'warm read');
  const afterWarm = await scrape();
  expect(value(afterWarm, 'blobdisk_cache_hits_total') - value(afterCold, 'blobdisk_cache_hits_total')).toBeGreaterThan(0);
  expect(value(afterWarm, 'blobdisk_down_bytes_total')).toBe(value(afterCold, 'blobdisk_down_bytes_total'));

  // A failed request is counted by its outcome and code: the blob deleted behind the mount's
  // back, and a part of it not cached yet read.
  await container.getBlobClient('outside.img').delete();
  const gone = await sh('dd', [`if=${cold}`, 'of=/dev/null', 'bs=1M', 'skip=3', 'count=1', 'iflag=direct', 'status=none']);
  expect(gone.code).not.toBe(0);
  const errors = [...(await scrape()).entries()].filter(([k]) => k.startsWith('blobdisk_azure_errors_total{'));
  expect(errors.some(([k, v]) => /code="404 BlobNotFound"/.test(k) && v > 0)).toBe(true);
});

it('status --watch redraws the table until Ctrl-C', async () => {
  const child = spawn(process.execPath, [CLI, 'status', mount.mnt, '--watch', '0.5'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const frames = (): number => out.split('\n').filter((l) => l.startsWith(`mount ${mount.mnt} `)).length;
  expect(await waitFor(async () => frames() >= 3, 30_000, 100)).toBe(true);
  child.kill('SIGINT');
  expect({ code: await exited, stderr: err }).toEqual({ code: 0, stderr: '' });
  expect(out).toMatch(/w\.img\tpage\t8 MiB\t/);
});

it('unmounts cleanly with the metrics server running', async () => {
  await unmountClean(mount);
  await expect(fetch(url)).rejects.toThrow();
});
