/* End to end: the security basics of a mount on a shared host. What blobdisk creates is
 * its owner's alone whatever the umask; the embedded Azurite refuses the emulator's
 * published key; secrets given as flags leave the process's command line; `unmount` never
 * pulls a live mount from under its process. Needs root and /dev/fuse. */

import { BlobServiceClient, StorageSharedKeyCredential } from '@azure/storage-blob';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { AZURITE_ACCOUNT, AZURITE_KEY, startAzurite, type RunningAzurite } from '../../lib/azurite';
import { controlSocketPath } from '../../lib/control';
import { cliEnv, isMounted, makeTempDir, removeTempDirs, runCli, sh, startMount, stopAllMounts } from '../support/mount';
import { containerOn, freshCacheDir, mountOn, ok, unmountClean } from '../support/write-helpers';

let azurite: RunningAzurite;

/** Every file and directory below `dir` whose mode lets anyone but its owner in. */
async function openEntries(dir: string): Promise<string[]> {
  const out: string[] = [];
  const st = await fsp.lstat(dir);
  if ((st.mode & 0o077) !== 0) out.push(`${dir} 0${(st.mode & 0o777).toString(8)}`);
  if (!st.isDirectory()) return out;
  for (const name of await fsp.readdir(dir)) out.push(...(await openEntries(path.join(dir, name))));
  return out;
}

async function cmdline(pid: number): Promise<string> {
  return (await fsp.readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0').join(' ');
}

beforeAll(async () => {
  azurite = await startAzurite({ inMemory: true });
  await containerOn(azurite.connectionString, 'sec');
});

afterAll(async () => {
  await stopAllMounts();
  await azurite?.stop();
  await removeTempDirs();
});

it('the embedded default keeps everything to its owner and refuses the published emulator key', async () => {
  const home = await makeTempDir('blobdisk-sec-home-');
  expect(process.umask() & 0o077).not.toBe(0o077); // the test runs with a permissive umask (022)
  const mount = await startMount(['--log-level', 'info'], { env: cliEnv({}, home) });
  try {
    ok(await sh('mkdir', [path.join(mount.mnt, 'vms')]), 'mkdir');
    ok(await sh('dd', ['if=/dev/urandom', `of=${path.join(mount.mnt, 'vms/x.img')}`, 'bs=1M', 'count=3', 'conv=fsync', 'status=none']), 'dd');
    expect(await openEntries(home)).toEqual([]);
    const socket = controlSocketPath(mount.mnt);
    expect(await openEntries(path.dirname(socket))).toEqual([]);

    const key = (await fsp.readFile(path.join(home, 'azurite', 'account-key'), 'utf8')).trim();
    expect(key).toMatch(/^[A-Za-z0-9+/]{86}==$/);
    expect(key).not.toBe(AZURITE_KEY);
    const endpoint = /embedded Azurite at (http:\/\/\S+)/.exec(mount.stderr())?.[1];
    expect(endpoint).toBeDefined();
    const published = new BlobServiceClient(endpoint ?? '', new StorageSharedKeyCredential(AZURITE_ACCOUNT, AZURITE_KEY));
    await expect(published.getContainerClient('vms').getProperties()).rejects.toMatchObject({ statusCode: 403 });
    const own = new BlobServiceClient(endpoint ?? '', new StorageSharedKeyCredential(AZURITE_ACCOUNT, key));
    expect((await own.getContainerClient('vms').getBlobClient('x.img').getProperties()).blobType).toBe('PageBlob');
  } finally {
    await unmountClean(mount);
  }
});

it('warns about a cache directory other users can read', async () => {
  const cache = await freshCacheDir();
  await fsp.mkdir(cache, { mode: 0o755 });
  await fsp.chmod(cache, 0o755);
  const mount = await mountOn(azurite.connectionString, 'sec', cache);
  try {
    expect(mount.stderr()).toContain(`WARN: ${cache} can be read by other users (mode 0755); blobdisk keeps disk data there: chmod 700 ${cache}`);
  } finally {
    await unmountClean(mount);
  }
});

it('takes an account key given as a flag out of its command line, also as a daemon', async () => {
  const endpoint = `http://127.0.0.1:${azurite.port}/${AZURITE_ACCOUNT}`;
  const flags = ['--account', AZURITE_ACCOUNT, '--account-key', azurite.accountKey, '--endpoint', endpoint, '--container', 'sec', '--cache-dir', await freshCacheDir()];
  const mount = await startMount(flags);
  try {
    const line = await cmdline(mount.child.pid ?? -1);
    expect(line).not.toContain(azurite.accountKey);
    expect(line).toContain('--account-key ***');
  } finally {
    await unmountClean(mount);
  }

  const home = await makeTempDir();
  const mnt = path.join(home, 'mnt');
  await fsp.mkdir(mnt);
  const pidFile = path.join(home, 'pid');
  ok(await runCli(['mount', mnt, ...flags.slice(0, -2), '--cache-dir', await freshCacheDir(), '--daemon', '--pid-file', pidFile], { env: cliEnv({}, home) }), 'mount --daemon');
  const pid = Number(await fsp.readFile(pidFile, 'utf8'));
  expect(await cmdline(pid)).not.toContain(azurite.accountKey);
  ok(await runCli(['unmount', mnt]), 'unmount of the daemon');
});

it('unmount leaves a live mount alone when its control socket is gone, and says how to stop it', async () => {
  const mount = await mountOn(azurite.connectionString, 'sec', await freshCacheDir());
  try {
    await fsp.rm(controlSocketPath(mount.mnt));
    const r = await runCli(['unmount', mount.mnt]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe(
      `blobdisk: the blobdisk process ${mount.child.pid} serving ${mount.mnt} does not answer on its control socket; stop it with kill ${mount.child.pid} (it uploads what is dirty first), then run blobdisk unmount again`,
    );
    expect(await isMounted(mount.mnt)).toBe(true);
  } finally {
    await unmountClean(mount);
  }
});
