/* End to end: who may use a mount and what stat shows. Without --allow-other only the user
 * who mounted gets in; with it, --uid, --gid, --file-mode and --dir-mode are what stat shows
 * and what the kernel enforces (default_permissions), so another user (libvirt's QEMU runs
 * as libvirt-qemu) reads and writes exactly as those allow. The other users here are
 * Debian's `nobody` and `daemon`, driven with runuser; `nobody` also mounts and unmounts
 * through fusermount3 as a user who is not root does. Needs root and /dev/fuse. */

import type { ContainerClient } from '@azure/storage-blob';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { startAzurite, type RunningAzurite } from '../../lib/azurite';
import { CLI, cliEnv, forceUnmount, isMounted, makeTempDir, newMountpoint, removeTempDirs, runCli, type RunResult, sh, sha256, statOf, stopAllMounts, waitFor, within } from '../support/mount';
import { containerOn, freshCacheDir, mountOn, ok, sdkDownload, unmountClean } from '../support/write-helpers';

const CONTAINER = 'access';

let azurite: RunningAzurite;
let container: ContainerClient;

/** The kernel's read-ahead of the mount at `mnt`, in KiB (its device from mountinfo). */
async function readAheadKiB(mnt: string): Promise<number> {
  const line = (await fsp.readFile('/proc/self/mountinfo', 'utf8')).split('\n').find((l) => l.split(' ')[4] === mnt);
  return Number((await fsp.readFile(`/sys/class/bdi/${line?.split(' ')[2] ?? 'none'}/read_ahead_kb`, 'utf8')).trim());
}

/** `cmd args` run as `user` (a child process through runuser). */
const as = (user: string, cmd: string, args: string[]): Promise<RunResult> => sh('runuser', ['-u', user, '--', cmd, ...args]);

beforeAll(async () => {
  azurite = await startAzurite({ inMemory: true });
  container = await containerOn(azurite.connectionString, CONTAINER);
  await container.getPageBlobClient('vms/disk.img').create(1024 * 1024);
});

afterAll(async () => {
  await stopAllMounts();
  await azurite?.stop();
  await removeTempDirs();
});

it('keeps other users out without --allow-other, shows the mounting user as owner, and reads ahead 1 MiB', async () => {
  const mount = await mountOn(azurite.connectionString, CONTAINER, await freshCacheDir(), [], { mnt: await newMountpoint('blobdisk-access-', true) });
  try {
    const file = path.join(mount.mnt, 'vms/disk.img');
    expect(await statOf(file, '%u %g %a')).toBe(`${process.getuid?.()} ${process.getgid?.()} 644`);
    expect(await statOf(path.join(mount.mnt, 'vms'), '%a')).toBe('755');
    // Root's mount reads ahead a whole request (1 MiB), not the kernel's 128 KiB.
    expect(await readAheadKiB(mount.mnt)).toBe(1024);
    const r = await as('nobody', 'ls', [mount.mnt]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/Permission denied/);
  } finally {
    await unmountClean(mount);
  }
});

it('with --allow-other, owner and modes are what stat shows and what the kernel enforces', async () => {
  const mount = await mountOn(
    azurite.connectionString,
    CONTAINER,
    await freshCacheDir(),
    ['--allow-other', '--uid', 'nobody', '--gid', 'nogroup', '--file-mode', '0640', '--dir-mode', '0750'],
    { mnt: await newMountpoint('blobdisk-access-', true) },
  );
  try {
    const file = path.join(mount.mnt, 'vms/disk.img');
    expect(await statOf(file, '%U %G %a')).toBe('nobody nogroup 640');
    expect(await statOf(path.join(mount.mnt, 'vms'), '%U %G %a')).toBe('nobody nogroup 750');
    // The owner writes and reads back; the write reaches Azure.
    const src = path.join(await makeTempDir(), 'pattern');
    await fsp.writeFile(src, Buffer.alloc(4096, 0x5a));
    await fsp.chmod(path.dirname(src), 0o755);
    await fsp.chmod(src, 0o644);
    ok(await as('nobody', 'dd', [`if=${src}`, `of=${file}`, 'bs=4096', 'seek=8', 'conv=notrunc,fsync', 'oflag=direct', 'status=none']), 'dd as nobody');
    const back = await as('nobody', 'sh', ['-c', `dd if="${file}" bs=4096 skip=8 count=1 status=none | od -An -tx1 | head -1`]);
    expect(back.stdout.trim().split(/\s+/)[0]).toBe('5a');
    // New files belong to the same owner.
    ok(await as('nobody', 'truncate', ['-s', '1M', path.join(mount.mnt, 'vms/new.img')]), 'truncate as nobody');
    expect(await statOf(path.join(mount.mnt, 'vms/new.img'), '%U %a %s')).toBe('nobody 640 1048576');
    // A user outside owner and group gets nothing: 0750/0640 leave "other" without rights.
    const denied = await as('daemon', 'ls', [path.join(mount.mnt, 'vms')]);
    expect(denied.code).not.toBe(0);
    expect(denied.stderr).toMatch(/Permission denied/);
  } finally {
    await unmountClean(mount);
  }
  const blob = await sdkDownload(container, 'vms/disk.img');
  expect(blob.subarray(8 * 4096, 9 * 4096).equals(Buffer.alloc(4096, 0x5a))).toBe(true);
});

it('a user who is not root mounts through fusermount3, writes, and unmounts with blobdisk unmount', async () => {
  // Everything the user needs is its own: the mountpoint, the cache and a home.
  const base = await makeTempDir('blobdisk-user-');
  const [mnt, cache, home] = ['mnt', 'cache', 'home'].map((d) => path.join(base, d)) as [string, string, string];
  for (const dir of [mnt, home]) await fsp.mkdir(dir);
  ok(await sh('chown', ['-R', 'nobody:nogroup', base]), 'chown');
  const src = path.join(home, 'pattern');
  const data = crypto.randomBytes(1024 * 1024);
  await fsp.writeFile(src, data, { mode: 0o644 });
  const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: home, AZURE_STORAGE_CONNECTION_STRING: azurite.connectionString };
  const child = spawn('runuser', ['-u', 'nobody', '--', process.execPath, CLI, 'mount', mnt, '--container', CONTAINER, '--cache-dir', cache], { env, stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  try {
    expect(await waitFor(async () => err.includes('blobdisk: mounted ') || child.exitCode !== null, 30_000, 100)).toBe(true);
    expect(err).toContain('blobdisk: mounted ');
    // The kernel shows the user's mount, made by fusermount3 (user_id is the user's).
    const nobody = Number((await sh('id', ['-u', 'nobody'])).stdout.trim());
    expect((await fsp.readFile('/proc/self/mountinfo', 'utf8')).split('\n').find((l) => l.includes(` ${mnt} `))).toContain(`user_id=${nobody}`);
    // A user may not raise the kernel's read-ahead: the mount keeps 128 KiB.
    expect(await readAheadKiB(mnt)).toBe(128);
    const file = path.join(mnt, 'vms/user.img');
    ok(await as('nobody', 'dd', [`if=${src}`, `of=${file}`, 'bs=64k', 'conv=fsync', 'status=none']), 'dd as nobody');
    expect((await as('nobody', 'sha256sum', [file])).stdout.split(' ')[0]).toBe(sha256(data));
    ok(await as('nobody', process.execPath, [CLI, 'unmount', mnt]), 'blobdisk unmount as nobody');
    expect(await within(exited, 60_000, 'still running')).toBe(0);
    expect(await isMounted(mnt)).toBe(false);
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
    await forceUnmount(mnt);
  }
  expect((await sdkDownload(container, 'vms/user.img')).equals(data)).toBe(true);
});

it('a read-only mount drops the write bits of the modes it was given', async () => {
  const mount = await mountOn(azurite.connectionString, CONTAINER, await freshCacheDir(), ['--read-only', '--allow-other', '--file-mode', '0666', '--dir-mode', '0777'], {
    mnt: await newMountpoint('blobdisk-access-', true),
  });
  try {
    expect(await statOf(path.join(mount.mnt, 'vms/disk.img'), '%a')).toBe('444');
    expect(await statOf(path.join(mount.mnt, 'vms'), '%a')).toBe('555');
    const r = await as('nobody', 'sh', ['-c', `echo x > "${path.join(mount.mnt, 'vms/disk.img')}"`]);
    expect(r.code).not.toBe(0);
  } finally {
    await unmountClean(mount);
  }
});

it('refuses a malformed mode or an unknown user with one line, mounting nothing', async () => {
  const mnt = await newMountpoint('blobdisk-access-', true);
  const r = await runCli(['mount', mnt, '--connection-string', azurite.connectionString, '--uid', 'no-such-user-here'], { env: cliEnv({}, await makeTempDir()) });
  expect(r.code).toBe(1);
  expect(r.stderr.trim()).toMatch(/^blobdisk: --uid "no-such-user-here" is neither a number nor a user of this machine; give e\.g\./);
  expect(r.stderr.trim().split('\n')).toHaveLength(1);
});
