/* End to end: Azure goes away under a mount with a tiny cache (4 grains). Writes keep
 * landing in the cache until it is full of data not yet uploaded; then a write waits a
 * bounded time (30 s by default) and fails with ENOSPC; nothing acknowledged is lost.
 * Unmounting while Azure is still down exits 3 after --drain-timeout and says how much
 * stays dirty; once Azure is back (Azurite restarted on the same data directory, on a new
 * port), a mount on the same cache dir uploads it all, and a direct SDK download shows it.
 * Needs root, /dev/fuse and libfuse2. */

import type { ContainerClient } from '@azure/storage-blob';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { startAzurite, type RunningAzurite } from '../../lib/azurite';
import { formatSize } from '../../lib/units';
import { makeTempDir, randomData, removeTempDirs, sh, sleep, stopAllMounts, uploadPageBlob, waitFor, within, type RunningMount } from '../support/mount';
import {
  MiB,
  containerOn,
  ddWrite,
  expectBytes,
  flushCli,
  mountOn,
  ok,
  patched,
  scratchFile,
  sdkDownload,
  unmountClean,
} from '../support/write-helpers';

const CONTAINER = 'full';
const DISK = 'small.img';
const DISK_SIZE = 16 * MiB;
const TINY_CACHE = ['--cache-size', '4M', '--grain-size', '1M', '--drain-timeout', '3'];

/** Written while Azure is up. */
const UP = randomData(MiB);
/** Written while Azure is down: fits in the cache. */
const DOWN = randomData(2 * MiB);
/** Written while Azure is down: more than the cache can hold. */
const TOO_MUCH = randomData(8 * MiB);

let azuriteDir: string;
let azurite: RunningAzurite | undefined;
let container: ContainerClient;
let cacheDir: string;
let mount: RunningMount;
/** What Azure must hold in the end: grows with every acknowledged write. */
let want: Buffer = Buffer.alloc(DISK_SIZE);
/** Bytes acknowledged while Azure was down, still dirty. */
let dirtyAcknowledged = 0;
let holder: Promise<Awaited<ReturnType<typeof sh>>> | undefined;
let holderDir: string;

beforeAll(async () => {
  azuriteDir = path.join(await makeTempDir('blobdisk-azurite-'), 'data');
  azurite = await startAzurite({ location: azuriteDir });
  container = await containerOn(azurite.connectionString, CONTAINER);
  await uploadPageBlob(container, DISK, DISK_SIZE);
  cacheDir = path.join(await makeTempDir('blobdisk-cache-'), 'cache');
  holderDir = await makeTempDir('blobdisk-holder-');
});

afterAll(async () => {
  if (holder) await fsp.writeFile(path.join(holderDir, 'go'), '').catch(() => undefined);
  await stopAllMounts();
  await azurite?.stop();
  await removeTempDirs();
});

describe('a tiny cache and Azure down', () => {
  test('with Azure up: a writer opens the image and keeps it open; a write is uploaded', async () => {
    mount = await mountOn(azurite?.connectionString ?? '', CONTAINER, cacheDir, TINY_CACHE);
    // A writer like a VM: opens its disk now (two descriptors, so each dd seeks from 0),
    // writes later, when told, while Azure is gone.
    const down = await scratchFile('down');
    const tooMuch = await scratchFile('too-much');
    await fsp.writeFile(down, DOWN);
    await fsp.writeFile(tooMuch, TOO_MUCH);
    const script = `
      exec 3<>"$1" 4<>"$1" || exit 9
      : > "$2/opened"
      while [ ! -e "$2/go" ]; do sleep 0.05; done
      dd if="$3" bs=1M seek=1 conv=notrunc status=none >&3 2>"$2/first.err"; echo $? > "$2/first"
      date +%s.%N > "$2/second.start"
      dd if="$4" bs=1M seek=4 conv=notrunc >&4 2>"$2/second.err"; echo $? > "$2/second"
      date +%s.%N > "$2/second.end"`;
    holder = sh('sh', ['-c', script, 'sh', path.join(mount.mnt, DISK), holderDir, down, tooMuch], { timeoutMs: 240_000 });
    expect(await waitFor(() => fsp.access(path.join(holderDir, 'opened')).then(() => true, () => false), 30_000, 50)).toBe(true);

    // Then a write, uploaded: the blob's ETag moves after the last stat that asked Azure.
    const r = await ddWrite(path.join(mount.mnt, DISK), 0, UP, { conv: ['fsync'] });
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
    want = patched(want, 0, UP);
    ok(await flushCli(mount), 'blobdisk flush');
    expectBytes(await sdkDownload(container, DISK), want, `${DISK} in Azure`);

    // Now Azure goes away.
    await azurite?.stop();
    azurite = undefined;
  });

  test('a new open of the image (cached, leased) works: reads from the cache, writes land in the cache', async () => {
    // Opening asks Azure for the blob's properties (close-to-open); with Azure down the
    // mount must still serve what it holds, as it does through descriptors opened before.
    // Wait until the mount's directory listing (trusted for 5 s) is stale, as it is when Azure
    // stays away for longer than a moment: the path must still resolve.
    await sleep(6_000);
    const file = path.join(mount.mnt, DISK);
    const out = await scratchFile('read-down');
    const r = await sh('dd', [`if=${file}`, `of=${out}`, 'bs=1M', 'count=1', 'status=none'], { timeoutMs: 60_000 });
    const log = (): string => mount.stderr().split('\n').slice(-6).join('\n');
    expect({ code: r.code, stderr: r.stderr, log: r.code === 0 ? '' : log() }).toEqual({ code: 0, stderr: '', log: '' });
    expectBytes(await fsp.readFile(out).catch(() => Buffer.alloc(0)), UP, 'grain 0 read from the cache while Azure is down');
    const w = await ddWrite(file, MiB, randomData(4096), { timeoutMs: 60_000 });
    expect({ code: w.code, stderr: w.stderr, log: w.code === 0 ? '' : log() }).toEqual({ code: 0, stderr: '', log: '' });
    // (The holder's first write below covers these 4 KiB, so `want` needs no update here.)
  });

  test('writes land in the cache until it is full of dirty data, then fail with ENOSPC after the bounded wait', async () => {
    await fsp.writeFile(path.join(holderDir, 'go'), '');
    const finished = await within(holder ?? Promise.resolve(undefined), 150_000, undefined);
    expect(finished).toBeDefined();
    const read = (name: string): Promise<string> => fsp.readFile(path.join(holderDir, name), 'utf8').catch(() => '?');

    // The first write fits in the cache: acknowledged at once.
    expect({ code: (await read('first')).trim(), stderr: await read('first.err') }).toEqual({ code: '0', stderr: '' });
    want = patched(want, MiB, DOWN);
    dirtyAcknowledged = DOWN.length;

    // The second needs more room than the cache has without evicting dirty data.
    const err = await read('second.err');
    expect((await read('second')).trim()).toBe('1');
    expect(err).toMatch(/No space left on device/);
    const copied = /^(\d+) bytes/m.exec(err);
    expect(copied).not.toBeNull();
    const acknowledged = Number(copied?.[1]);
    expect(acknowledged).toBeGreaterThanOrEqual(0);
    expect(acknowledged).toBeLessThan(TOO_MUCH.length);
    want = patched(want, 4 * MiB, TOO_MUCH.subarray(0, acknowledged));
    dirtyAcknowledged += acknowledged;
    // dirty data: 2 MiB + what the second write got in, at most the cache (4 grains).
    expect(dirtyAcknowledged).toBeLessThanOrEqual(4 * MiB);
    // It waited the bounded time (30 s by default) before giving up, not forever.
    const waited = Number(await read('second.end')) - Number(await read('second.start'));
    expect(waited).toBeGreaterThan(20);
    expect(waited).toBeLessThan(120);

    const status = await mount.status();
    expect({ dirty: status.dirtyBytes, cacheDirty: status.cacheDirtyBytes <= status.cacheSizeBytes }).toEqual({ dirty: dirtyAcknowledged, cacheDirty: true });
  }, 180_000);

  test('unmount while Azure is down exits 3 after --drain-timeout and says how much stays dirty', async () => {
    const started = Date.now();
    const stopped = await mount.stop();
    const seconds = (Date.now() - started) / 1000;
    expect({ code: stopped.code, clean: stopped.clean }).toEqual({ code: 3, clean: true });
    expect(stopped.stderr).toMatch(new RegExp(`${formatSize(dirtyAcknowledged).replace('.', '\\.')} could not be uploaded`));
    expect(stopped.stderr).toContain(cacheDir);
    expect(seconds).toBeLessThan(45);
  }, 90_000);

  test('Azure back (restarted on the same data, new port): a mount on the same cache uploads it all', async () => {
    azurite = await startAzurite({ location: azuriteDir });
    container = await containerOn(azurite.connectionString, CONTAINER);
    const again = await mountOn(azurite.connectionString, CONTAINER, cacheDir, TINY_CACHE);
    const flush = await flushCli(again);
    expect({ code: flush.code, stderr: flush.code === 0 ? '' : flush.stderr }).toEqual({ code: 0, stderr: '' });
    expect((await again.status()).dirtyBytes).toBe(0);
    await unmountClean(again);
    expectBytes(await sdkDownload(container, DISK), want, `${DISK} in Azure after the drain`);
  }, 120_000);
});

