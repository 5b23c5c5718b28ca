/* End to end: how a mount starts and ends. A read-only mount refuses changes with EROFS;
 * `blobdisk unmount` from another process ends the mount process with exit 0; with no
 * credentials at all the mount runs on its embedded Azurite and leaves no process behind. */

import { BlobServiceClient, type ContainerClient } from '@azure/storage-blob';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { startAzurite, type RunningAzurite } from '../../lib/azurite';
import {
  cliEnv,
  forceUnmount,
  isMounted,
  lines,
  makeTempDir,
  processesMentioning,
  randomData,
  removeTempDirs,
  runCli,
  sh,
  sha256,
  sha256OfFile,
  startMount,
  statOf,
  stopAllMounts,
  uploadPageBlob,
  waitFor,
  within,
} from '../support/mount';

const MiB = 1024 * 1024;
const DATA = randomData(2 * MiB);

let azurite: RunningAzurite;
let container: ContainerClient;
let work: string;

beforeAll(async () => {
  azurite = await startAzurite({ inMemory: true });
  container = BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient('life');
  await container.create();
  await uploadPageBlob(container, 'disk.img', DATA.length, [{ offset: 0, data: DATA }]);
  await container.getBlockBlobClient('notes.txt').upload('notes\n', 6);
  work = await makeTempDir();
});

afterAll(async () => {
  await stopAllMounts();
  await azurite?.stop();
  await removeTempDirs();
});

function mountArgs(cacheDir: string, ...more: string[]): string[] {
  return [
    '--connection-string', azurite.connectionString,
    '--container', 'life',
    '--cache-dir', path.join(work, cacheDir),
    '--log-level', 'warn',
    ...more,
  ];
}

describe('--read-only', () => {
  test('reads work; every change fails with EROFS and reaches nothing in Azure', async () => {
    const m = await startMount(mountArgs('ro', '--read-only'));
    try {
      expect(m.stderr()).toMatch(/read-only/);
      expect(await sha256OfFile(path.join(m.mnt, 'disk.img'))).toBe(sha256(DATA));
      expect(await statOf(path.join(m.mnt, 'disk.img'), '%A')).toBe('-r--r--r--');

      const attempts: [string, string][] = [
        ['create', `echo x > "$1/new.txt"`],
        ['overwrite', `echo x > "$1/notes.txt"`],
        ['append', `echo x >> "$1/notes.txt"`],
        ['dd into the image', `dd if=/dev/zero of="$1/disk.img" bs=512 count=1 conv=notrunc status=none`],
        ['truncate', `truncate -s 0 "$1/disk.img"`],
        ['rm', `rm -f "$1/notes.txt"`],
        ['mkdir', `mkdir "$1/newdir"`],
        ['mv', `mv "$1/notes.txt" "$1/moved.txt"`],
        ['chmod', `chmod 600 "$1/notes.txt"`],
      ];
      for (const [what, script] of attempts) {
        const r = await sh('sh', ['-c', script, 'sh', m.mnt]);
        expect({ what, code: r.code === 0 ? 0 : 'failed', erofs: /Read-only file system/.test(r.stderr) }).toEqual({ what, code: 'failed', erofs: true });
      }

      // Nothing changed in Azure and the tree looks as before.
      const names: string[] = [];
      for await (const blob of container.listBlobsFlat()) names.push(blob.name);
      expect(names.sort()).toEqual(['disk.img', 'notes.txt']);
      expect((await container.getBlobClient('notes.txt').downloadToBuffer()).toString()).toBe('notes\n');
      expect(await sha256OfFile(path.join(m.mnt, 'disk.img'))).toBe(sha256(DATA));
    } finally {
      expect((await m.stop()).code).toBe(0);
    }
  });
});

describe('blobdisk unmount', () => {
  test('from another process: the mount process exits 0 and the mountpoint is free again', async () => {
    const m = await startMount(mountArgs('unmount'));
    expect(await isMounted(m.mnt)).toBe(true);
    expect(await sha256OfFile(path.join(m.mnt, 'disk.img'))).toBe(sha256(DATA));

    const r = await runCli(['unmount', m.mnt], { timeoutMs: 90_000 });
    expect(r.stderr).toMatch(/^blobdisk: unmounted /m);
    expect(r.code).toBe(0);
    const exit = await within(m.exited, 30_000, 'still running' as const);
    expect(exit).toEqual({ code: 0, signal: null });
    expect(m.stderr()).toContain(`blobdisk: unmounted ${m.mnt}`);
    expect(await isMounted(m.mnt)).toBe(false);
    // The directory is an ordinary empty directory again.
    const ls = await sh('ls', ['-A', m.mnt]);
    expect(ls.code).toBe(0);
    expect(ls.stdout).toBe('');
    // And it can be mounted again.
    const again = await startMount(mountArgs('unmount'), { mnt: m.mnt });
    expect(await sha256OfFile(path.join(again.mnt, 'disk.img'))).toBe(sha256(DATA));
    const stopped = await again.stop();
    expect(stopped.code).toBe(0);
    expect(stopped.clean).toBe(true);
  });

  test('a mount made through a symlinked path is found by its real path too: unmount drains it, never clears it', async () => {
    const real = await makeTempDir('blobdisk-real-');
    await fsp.mkdir(path.join(real, 'mnt'));
    const link = path.join(await makeTempDir('blobdisk-link-'), 'to-real');
    await fsp.symlink(real, link);
    const m = await startMount(mountArgs('symlinked'), { mnt: path.join(link, 'mnt') });
    try {
      expect(await sha256OfFile(path.join(m.mnt, 'disk.img'))).toBe(sha256(DATA));
      expect((await runCli(['status', path.join(real, 'mnt'), '--json'])).code).toBe(0);
      const r = await runCli(['unmount', path.join(real, 'mnt')], { timeoutMs: 90_000 });
      expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: `blobdisk: unmounted ${path.join(real, 'mnt')}\n` });
      expect(await within(m.exited, 30_000, 'still running' as const)).toEqual({ code: 0, signal: null });
      // The process drained and unmounted itself; nothing pulled the mount from under it.
      expect(m.stderr()).not.toContain('unmounted from outside');
      expect(await isMounted(path.join(real, 'mnt'))).toBe(false);
    } finally {
      await m.stop();
      // The kernel names the mount by its real path: a failed run must not leave it behind.
      await forceUnmount(path.join(real, 'mnt'));
    }
  });

  test('status and unmount of a directory nothing is mounted on fail with one line', async () => {
    const dir = await makeTempDir();
    for (const args of [['unmount', dir], ['status', dir, '--json']]) {
      const r = await runCli(args);
      expect(r.code).not.toBe(0);
      expect(lines(r.stderr)).toHaveLength(1);
      expect(r.stderr).toMatch(/^blobdisk: /);
    }
  });

  test('SIGINT (Ctrl-C) unmounts and exits 0', async () => {
    const m = await startMount(mountArgs('sigint'));
    expect((await sh('ls', [m.mnt])).code).toBe(0);
    m.child.kill('SIGINT');
    const exit = await within(m.exited, 30_000, 'still running' as const);
    expect(exit).toEqual({ code: 0, signal: null });
    expect(m.stderr()).toContain(`blobdisk: unmounted ${m.mnt}`);
    expect(await isMounted(m.mnt)).toBe(false);
    await m.stop();
  });

  test('a SIGTERM sent the moment the ready line appears still unmounts cleanly and exits 0', async () => {
    // A supervisor may act on the ready line at once: by then SIGTERM must be handled. The
    // window is short, so try a few times.
    const outcomes: unknown[] = [];
    const mnt = path.join(await makeTempDir('blobdisk-mnt-'), 'mnt');
    await fsp.mkdir(mnt);
    for (let i = 0; i < 5; i++) {
      const m = await startMount(mountArgs('sigterm-early'), { mnt, onReady: (child) => child.kill('SIGTERM') });
      const exit = await within(m.exited, 30_000, 'still running' as const);
      const mounted = await isMounted(m.mnt);
      await m.stop();
      outcomes.push({ exit, mounted });
    }
    expect(outcomes).toEqual(Array(5).fill({ exit: { code: 0, signal: null }, mounted: false }));
  });
});

describe('embedded default', () => {
  test('no credentials: mounts on its own Azurite (said in one line), ls works, nothing remains after unmount', async () => {
    const dataDir = await makeTempDir('blobdisk-data-');
    const env = cliEnv({}, dataDir);
    const m = await startMount(['--data-dir', dataDir, '--log-level', 'info'], { env, readyTimeoutMs: 90_000 });
    try {
      const said = lines(m.stderr()).filter((l) => /embedded azurite/i.test(l));
      expect(said).toHaveLength(1);
      // Its Azurite runs under the data directory while the mount lives.
      expect((await processesMentioning(dataDir)).some((p) => /azurite/i.test(p.cmdline))).toBe(true);

      const ls = await sh('ls', ['-la', m.mnt]);
      expect(ls.code).toBe(0);
      expect(lines(ls.stdout)[0]).toMatch(/^total /);

      // The same code path as for Azure: a container created over HTTP shows up in the mount.
      const endpoint = /(http:\/\/127\.0\.0\.1:\d+\/devstoreaccount1)/.exec(said[0] ?? '')?.[1];
      expect(endpoint).toBeDefined();
      if (endpoint !== undefined) {
        // It serves its own key, kept beside its data, not the published one.
        const key = (await fsp.readFile(path.join(dataDir, 'azurite', 'account-key'), 'utf8')).trim();
        const cs = azurite.connectionString.replace(/BlobEndpoint=[^;]+/, `BlobEndpoint=${endpoint}`).replace(/AccountKey=[^;]+/, `AccountKey=${key}`);
        const embedded = BlobServiceClient.fromConnectionString(cs).getContainerClient('made-outside');
        await embedded.create();
        await embedded.getBlockBlobClient('hello.txt').upload('hi\n', 3);
        const seen = await waitFor(async () => (await sh('cat', [path.join(m.mnt, 'made-outside', 'hello.txt')])).stdout === 'hi\n', 15_000, 500);
        expect(seen).toBe(true);
      }
      const status = await m.status();
      expect(status.cacheDir.startsWith(dataDir)).toBe(true);
    } finally {
      const stopped = await m.stop();
      expect(stopped.code).toBe(0);
    }
    expect(await isMounted(m.mnt)).toBe(false);
    const left = await waitFor(async () => (await processesMentioning(dataDir)).length === 0, 15_000);
    expect(left ? [] : await processesMentioning(dataDir)).toEqual([]);
    // Azurite kept its data under the data directory.
    expect((await fsp.readdir(dataDir)).length).toBeGreaterThan(0);
  });
});
