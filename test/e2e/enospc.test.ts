/* End to end: Azure goes away under a mount with a tiny cache (4 grains). Writes keep
 * landing in the cache until it is full of data not yet uploaded; then a write waits a
 * bounded time (30 s by default) and fails with ENOSPC; nothing acknowledged is lost.
 * Unmounting while Azure is still down exits 3 after --drain-timeout and says how much
 * stays dirty; once Azure is back (Azurite restarted on the same data directory, on a new
 * port), a mount on the same cache dir uploads it all, and a direct SDK download shows it.
 * Each test builds its own Azurite, cache and mount, and takes them down again: any one
 * of them runs alone. Needs root, /dev/fuse and libfuse3. */

import type { ContainerClient } from '@azure/storage-blob';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { startAzurite, type RunningAzurite } from '../../lib/azurite';
import { formatSize } from '../../lib/units';
import { makeTempDir, randomData, removeTempDirs, sh, stopAllMounts, uploadPageBlob, waitFor, within, type RunningMount } from '../support/mount';
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

/** One test's Azurite (on disk, so it can come back), container, cache directory and mount. */
interface World {
  readonly azuriteDir: string;
  azurite: RunningAzurite | undefined;
  container: ContainerClient;
  readonly cacheDir: string;
  mount: RunningMount | undefined;
  /** What Azure must hold in the end: grows with every acknowledged write. */
  want: Buffer;
}

let current: World | undefined;

afterEach(async () => {
  await stopAllMounts();
  await current?.azurite?.stop();
  current = undefined;
});

// Scratch files of write-helpers live in one directory for the whole file.
afterAll(() => removeTempDirs());

/** A fresh Azurite with the disk blob, and an empty cache directory. */
async function world(): Promise<World> {
  const azuriteDir = path.join(await makeTempDir('blobdisk-azurite-'), 'data');
  const azurite = await startAzurite({ location: azuriteDir });
  const container = await containerOn(azurite.connectionString, CONTAINER);
  await uploadPageBlob(container, DISK, DISK_SIZE);
  const cacheDir = path.join(await makeTempDir('blobdisk-cache-'), 'cache');
  current = { azuriteDir, azurite, container, cacheDir, mount: undefined, want: Buffer.alloc(DISK_SIZE) };
  return current;
}

/** Mounts with the tiny cache (and `more` flags); the image is written (so leased and
 *  cached) and uploaded while Azure is up. */
async function mountAndWriteUp(w: World, more: readonly string[] = []): Promise<RunningMount> {
  const mount = await mountOn(w.azurite?.connectionString ?? '', CONTAINER, w.cacheDir, [...TINY_CACHE, ...more]);
  w.mount = mount;
  const r = await ddWrite(path.join(mount.mnt, DISK), 0, UP, { conv: ['fsync'] });
  expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
  w.want = patched(w.want, 0, UP);
  ok(await flushCli(mount), 'blobdisk flush');
  return mount;
}

/** Azure goes away (Azurite stops; its data stays on disk). */
async function azureDown(w: World): Promise<void> {
  await w.azurite?.stop();
  w.azurite = undefined;
}

/** Writes DOWN at 1 MiB while Azure is down: it fits in the cache and is acknowledged. */
async function writeWhileDown(w: World, mount: RunningMount): Promise<void> {
  const r = await ddWrite(path.join(mount.mnt, DISK), MiB, DOWN, { timeoutMs: 60_000 });
  expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
  w.want = patched(w.want, MiB, DOWN);
}

describe('a tiny cache and Azure down', () => {
  test('with Azure up: a write is uploaded', async () => {
    const w = await world();
    await mountAndWriteUp(w);
    expectBytes(await sdkDownload(w.container, DISK), w.want, `${DISK} in Azure`);
  });

  test('a new open of the image (cached, leased) works: reads from the cache, writes land in the cache', async () => {
    // Directory listings are trusted for no time at all here: the path must still resolve
    // with Azure gone, as it does when Azure stays away for longer than the listing's TTL.
    const w = await world();
    const mount = await mountAndWriteUp(w, ['--dir-cache-time', '0']);
    await azureDown(w);
    // Opening asks Azure for the blob's properties (close-to-open); with Azure down the
    // mount must still serve what it holds.
    const file = path.join(mount.mnt, DISK);
    const out = await scratchFile('read-down');
    const r = await sh('dd', [`if=${file}`, `of=${out}`, 'bs=1M', 'count=1', 'status=none'], { timeoutMs: 60_000 });
    const log = (): string => mount.stderr().split('\n').slice(-6).join('\n');
    expect({ code: r.code, stderr: r.stderr, log: r.code === 0 ? '' : log() }).toEqual({ code: 0, stderr: '', log: '' });
    expectBytes(await fsp.readFile(out).catch(() => Buffer.alloc(0)), UP, 'grain 0 read from the cache while Azure is down');
    const w4k = await ddWrite(file, MiB, randomData(4096), { timeoutMs: 60_000 });
    expect({ code: w4k.code, stderr: w4k.stderr, log: w4k.code === 0 ? '' : log() }).toEqual({ code: 0, stderr: '', log: '' });
    expect((await mount.status()).dirtyBytes).toBe(4096);
  });

  test('writes land in the cache until it is full of dirty data, then fail with ENOSPC after the bounded wait', async () => {
    const w = await world();
    const holderDir = await makeTempDir('blobdisk-holder-');
    const mount = await mountOn(w.azurite?.connectionString ?? '', CONTAINER, w.cacheDir, TINY_CACHE);
    w.mount = mount;
    // A writer like a VM: opens its disk while Azure is up (two descriptors, so each dd
    // seeks from 0), writes later, when told, while Azure is gone.
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
    const holder = sh('sh', ['-c', script, 'sh', path.join(mount.mnt, DISK), holderDir, down, tooMuch], { timeoutMs: 240_000 });
    const go = (): Promise<void> => fsp.writeFile(path.join(holderDir, 'go'), '').catch(() => undefined);
    try {
      expect(await waitFor(() => fsp.access(path.join(holderDir, 'opened')).then(() => true, () => false), 30_000, 50)).toBe(true);
      // Grain 0 written and uploaded (clean, may be evicted); then Azure goes away.
      const r = await ddWrite(path.join(mount.mnt, DISK), 0, UP, { conv: ['fsync'] });
      expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
      ok(await flushCli(mount), 'blobdisk flush');
      await azureDown(w);

      await go();
      const finished = await within(holder, 150_000, undefined);
      expect(finished).toBeDefined();
      const read = (name: string): Promise<string> => fsp.readFile(path.join(holderDir, name), 'utf8').catch(() => '?');

      // The first write fits in the cache (grains 1 and 2): acknowledged at once.
      expect({ code: (await read('first')).trim(), stderr: await read('first.err') }).toEqual({ code: '0', stderr: '' });

      // The second needs more room than the cache has without evicting dirty data: of its
      // 4 grains, only two had room (the free one, and the clean grain 0 evicted).
      const err = await read('second.err');
      expect((await read('second')).trim()).toBe('1');
      expect(err).toMatch(/No space left on device/);
      const copied = /^(\d+) bytes/m.exec(err);
      expect(copied).not.toBeNull();
      const acknowledged = Number(copied?.[1]);
      expect(acknowledged).toBeGreaterThanOrEqual(MiB);
      expect(acknowledged).toBeLessThanOrEqual(2 * MiB);
      // It waited the bounded time (30 s by default) before giving up, not forever.
      const waited = Number(await read('second.end')) - Number(await read('second.start'));
      expect(waited).toBeGreaterThan(20);
      expect(waited).toBeLessThan(120);

      // Everything acknowledged is dirty in the cache, and nothing more: 2 MiB + what the
      // second write got in, at most the cache (4 grains).
      const status = await mount.status();
      expect(status.dirtyBytes).toBe(DOWN.length + acknowledged);
      expect(status.dirtyBytes).toBeLessThanOrEqual(4 * MiB);
    } finally {
      await go();
      await holder.catch(() => undefined);
    }
  }, 180_000);

  test('unmount while Azure is down exits 3 after --drain-timeout and says how much stays dirty', async () => {
    const w = await world();
    const mount = await mountAndWriteUp(w);
    await azureDown(w);
    await writeWhileDown(w, mount);
    const started = Date.now();
    const stopped = await mount.stop();
    const seconds = (Date.now() - started) / 1000;
    expect({ code: stopped.code, clean: stopped.clean }).toEqual({ code: 3, clean: true });
    expect(stopped.stderr).toMatch(new RegExp(`${formatSize(DOWN.length).replace('.', '\\.')} could not be uploaded`));
    expect(stopped.stderr).toContain(w.cacheDir);
    expect(seconds).toBeLessThan(45);
  }, 90_000);

  test('Azure back (restarted on the same data, new port): a mount on the same cache uploads it all', async () => {
    const w = await world();
    const mount = await mountAndWriteUp(w);
    await azureDown(w);
    await writeWhileDown(w, mount);
    expect((await mount.stop()).code).toBe(3); // the drain could not reach Azure
    w.azurite = await startAzurite({ location: w.azuriteDir });
    w.container = await containerOn(w.azurite.connectionString, CONTAINER);
    const again = await mountOn(w.azurite.connectionString, CONTAINER, w.cacheDir, TINY_CACHE);
    const flush = await flushCli(again);
    expect({ code: flush.code, stderr: flush.code === 0 ? '' : flush.stderr }).toEqual({ code: 0, stderr: '' });
    expect((await again.status()).dirtyBytes).toBe(0);
    await unmountClean(again);
    expectBytes(await sdkDownload(w.container, DISK), w.want, `${DISK} in Azure after the drain`);
  }, 120_000);
});
