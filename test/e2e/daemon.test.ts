/* End to end: running blobdisk as a host runs it. `mount --daemon` returns once mounted
 * (0) or with the child's own error (1), keeps a pid file and a log; an /etc/fstab-style
 * line mounts through mount(8) and /sbin/mount.fuse.blobdisk and `umount` ends it after
 * draining; settings come from flags, BLOBDISK_* variables and a --config file, in that
 * order, and --print-config shows them with secrets masked. Needs root and /dev/fuse. */

import type { ContainerClient } from '@azure/storage-blob';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { startAzurite, type RunningAzurite } from '../../lib/azurite';
import { MOUNT_NODE_FLAGS } from '../../lib/cli/daemon';
import { cliEnv, isMounted, makeTempDir, newMountpoint, processesMentioning, randomData, removeTempDirs, ROOT, runCli, sh, statOf, stopAllMounts, waitFor } from '../support/mount';
import { containerOn, freshCacheDir, mountOn, ok, sdkDownload, scratchFile, unmountClean } from '../support/write-helpers';

const CONTAINER = 'hosts';
const HELPER = '/sbin/mount.fuse.blobdisk';

let azurite: RunningAzurite;
let container: ContainerClient;
/** What was at HELPER before the tests, put back afterwards. */
let helperBefore: string | undefined | null = null;

/** Waits for the mount at `mnt` to end: no longer mounted, and no blobdisk process names it. */
async function ended(mnt: string): Promise<boolean> {
  return waitFor(async () => !(await isMounted(mnt)) && (await processesMentioning(`mount ${mnt}`)).length === 0, 60_000);
}

beforeAll(async () => {
  azurite = await startAzurite({ inMemory: true });
  container = await containerOn(azurite.connectionString, CONTAINER);
});

afterAll(async () => {
  await stopAllMounts();
  if (helperBefore !== null) {
    await fsp.rm(HELPER, { force: true });
    if (helperBefore !== undefined) await fsp.symlink(helperBefore, HELPER);
  }
  await azurite?.stop();
  await removeTempDirs();
});

describe('--daemon', () => {
  it('returns 0 once mounted, with a pid file and a log; unmount ends it and removes the pid file', async () => {
    const mnt = await newMountpoint('blobdisk-daemon-');
    const dir = await makeTempDir();
    const pidFile = path.join(dir, 'mount.pid');
    const logFile = path.join(dir, 'mount.log');
    const env = cliEnv({ AZURE_STORAGE_CONNECTION_STRING: azurite.connectionString }, dir);
    const r = await runCli(['mount', mnt, '--container', CONTAINER, '--cache-dir', await freshCacheDir(), '--daemon', '--pid-file', pidFile, '--log-file', logFile], { env, timeoutMs: 60_000 });
    expect({ code: r.code, stderr: r.stderr.trim() }).toEqual({ code: 0, stderr: expect.stringMatching(/^blobdisk: mounted container hosts at .*; running as pid \d+, logging to /) as unknown });
    expect(await isMounted(mnt)).toBe(true);
    const pid = Number((await fsp.readFile(pidFile, 'utf8')).trim());
    expect(() => process.kill(pid, 0)).not.toThrow();
    // The mount child runs with the mount's Node flags, as bin/blobdisk's first line gives them.
    const argv = (await fsp.readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0');
    expect(argv.slice(1, 1 + MOUNT_NODE_FLAGS.length)).toEqual(MOUNT_NODE_FLAGS);
    expect((await fsp.readFile(path.join(ROOT, 'bin', 'blobdisk'), 'utf8')).split('\n')[0]).toBe(`#!/usr/bin/env -S node ${MOUNT_NODE_FLAGS.join(' ')}`);
    expect(await fsp.readFile(logFile, 'utf8')).toMatch(/blobdisk: mounted container hosts/);

    const data = randomData(3 * 1024 * 1024);
    const src = await scratchFile('daemon-data');
    await fsp.writeFile(src, data);
    ok(await sh('cp', [src, path.join(mnt, 'd.img')]), 'cp into the daemon mount');
    ok(await runCli(['unmount', mnt], { env, timeoutMs: 60_000 }), 'blobdisk unmount');
    expect(await ended(mnt)).toBe(true);
    await expect(fsp.stat(pidFile)).rejects.toThrow(/ENOENT/);
    expect((await sdkDownload(container, 'd.img')).equals(data)).toBe(true);
  });

  it('returns the mount child’s own one-line error and 1 when it cannot mount', async () => {
    const dir = await makeTempDir();
    const missing = path.join(dir, 'no-such-dir');
    const env = cliEnv({ AZURE_STORAGE_CONNECTION_STRING: azurite.connectionString }, dir);
    const r = await runCli(['mount', missing, '--daemon'], { env, timeoutMs: 60_000 });
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe(`blobdisk: mountpoint ${missing} does not exist; create it first: mkdir -p ${missing}`);
  });
});

describe('/etc/fstab', () => {
  it('mounts a line of type fuse.blobdisk through mount(8), and umount drains and ends it', async () => {
    helperBefore = await fsp.readlink(HELPER).catch(() => undefined);
    await fsp.rm(HELPER, { force: true });
    await fsp.symlink(path.join(ROOT, 'bin', 'mount.fuse.blobdisk'), HELPER);

    const mnt = await newMountpoint('blobdisk-daemon-');
    const dir = await makeTempDir();
    const conf = path.join(dir, 'blobdisk.yaml');
    await fsp.writeFile(conf, `connection-string: "${azurite.connectionString}"\ncache-dir: ${await freshCacheDir()}\nlog-level: warn\n`, { mode: 0o600 });
    const fstab = path.join(dir, 'fstab');
    await fsp.writeFile(fstab, `${CONTAINER} ${mnt} fuse.blobdisk config=${conf},data_dir=${dir},allow_other,uid=nobody,file_mode=0640,_netdev,noauto 0 0\n`);

    ok(await sh('mount', ['-T', fstab, mnt], { env: cliEnv(), timeoutMs: 90_000 }), 'mount -T fstab');
    expect(await isMounted(mnt)).toBe(true);
    const data = randomData(2 * 1024 * 1024 + 512);
    const src = await scratchFile('fstab-data');
    await fsp.writeFile(src, data);
    ok(await sh('cp', [src, path.join(mnt, 'f.img')]), 'cp into the fstab mount');
    expect(await statOf(path.join(mnt, 'f.img'), '%U %a')).toBe('nobody 640');

    ok(await sh('umount', [mnt]), 'umount');
    expect(await ended(mnt)).toBe(true);
    expect((await sdkDownload(container, 'f.img')).equals(data)).toBe(true);
    expect(await fsp.readFile(path.join(dir, 'blobdisk.log'), 'utf8')).toContain(`blobdisk: unmounted ${mnt}\n`);
  });
});

describe('examples/blobdisk@.service', () => {
  const unit = path.join(ROOT, 'examples', 'blobdisk@.service');

  it('passes systemd-analyze verify', async () => {
    const dir = await makeTempDir();
    await fsp.copyFile(unit, path.join(dir, 'blobdisk@.service'));
    await fsp.symlink('blobdisk@.service', path.join(dir, 'blobdisk@mnt-blobs.service'));
    const r = await sh('systemd-analyze', ['verify', path.join(dir, 'blobdisk@mnt-blobs.service')]);
    expect({ code: r.code, said: (r.stdout + r.stderr).trim() }).toEqual({ code: 0, said: '' });
  });

  it('its ExecStart mounts and returns, and its ExecStop drains and unmounts, as systemd would run them', async () => {
    const text = await fsp.readFile(unit, 'utf8');
    const mnt = await newMountpoint('blobdisk-daemon-');
    const etc = await makeTempDir();
    const instance = 'vmdisk';
    await fsp.writeFile(path.join(etc, `${instance}.yaml`), `container: ${CONTAINER}\ncache-dir: ${await freshCacheDir()}\ndata-dir: ${etc}\n`);
    // systemd's specifiers and the install paths the unit assumes, pointed at this checkout.
    const line = (key: string): string[] => {
      const found = text.split('\n').find((l) => l.startsWith(`${key}=`));
      if (found === undefined) throw new Error(`no ${key} in the unit`);
      return found
        .slice(key.length + 1)
        .replaceAll('%f', mnt)
        .replaceAll('%i', instance)
        .replaceAll('/usr/bin/node', process.execPath)
        .replaceAll('/opt/blobdisk', ROOT)
        .replaceAll('/etc/blobdisk', etc)
        .replaceAll('/run/', `${etc}/`)
        .replaceAll('/var/log/blobdisk', etc)
        .split(' ');
    };
    const env = cliEnv({ AZURE_STORAGE_CONNECTION_STRING: azurite.connectionString }, etc);
    const [start, ...startArgs] = line('ExecStart');
    ok(await sh(start ?? '', startArgs, { env, timeoutMs: 60_000 }), 'ExecStart');
    const pidFile = line('PIDFile')[0] ?? '';
    expect(Number(await fsp.readFile(pidFile, 'utf8'))).toBeGreaterThan(0);
    const data = randomData(1024 * 1024);
    const src = await scratchFile('unit-data');
    await fsp.writeFile(src, data);
    ok(await sh('cp', [src, path.join(mnt, 'unit.img')]), 'cp into the service mount');
    const [stop, ...stopArgs] = line('ExecStop');
    ok(await sh(stop ?? '', stopArgs, { env, timeoutMs: 120_000 }), 'ExecStop');
    expect(await ended(mnt)).toBe(true);
    await expect(fsp.stat(pidFile)).rejects.toThrow(/ENOENT/);
    expect((await sdkDownload(container, 'unit.img')).equals(data)).toBe(true);
  });
});

describe('help', () => {
  it('groups the mount flags, shows their defaults and gives examples under every command', async () => {
    const r = await runCli(['mount', '--help']);
    expect(r.code).toBe(0);
    const groups = ['Azure:', 'Cache:', 'Writes:', 'FUSE and access:', 'Logging and metrics:', 'Running:'];
    const at = groups.map((g) => r.stdout.split('\n').indexOf(g));
    expect(at.every((i) => i > 0)).toBe(true);
    expect([...at].sort((a, b) => a - b)).toEqual(at);
    expect(r.stdout).toMatch(/--cache-size .*\n?.*\[default: 10G\]/);
    expect(r.stdout).toMatch(/--file-mode .*\[default: 0644\]/);
    expect(r.stdout).toContain('BLOBDISK_<NAME>');
    for (const command of ['mount', 'unmount', 'flush', 'status']) {
      const help = await runCli([command, '--help']);
      expect({ command, examples: help.stdout.includes('\nExamples:\n') }).toEqual({ command, examples: true });
    }
  });
});

describe('settings', () => {
  it('take flags over BLOBDISK_* variables over the --config file, in a real mount', async () => {
    const dir = await makeTempDir();
    const conf = path.join(dir, 'b.yaml');
    await fsp.writeFile(conf, 'file-mode: 0600\ndir-mode: 0711\nread-only: true\n');
    const env = cliEnv({ BLOBDISK_CONFIG: conf, BLOBDISK_DIR_MODE: '0750', BLOBDISK_READ_ONLY: 'false' });
    const mount = await mountOn(azurite.connectionString, CONTAINER, await freshCacheDir(), ['--file-mode', '0604'], { env });
    try {
      await container.getPageBlobClient('sub/x.img').create(4096);
      // Flag beats file for file-mode; environment beats file for dir-mode and read-only.
      expect(await statOf(path.join(mount.mnt, 'sub/x.img'), '%a')).toBe('604');
      expect(await statOf(path.join(mount.mnt, 'sub'), '%a')).toBe('750');
    } finally {
      await unmountClean(mount);
    }
  });

  it('--print-config shows the result with secrets masked, and mounts nothing', async () => {
    const dir = await makeTempDir();
    const key = 'S3cretKeyS3cretKeyS3cretKey==';
    const env = cliEnv({ BLOBDISK_ACCOUNT_KEY: key, BLOBDISK_CACHE_SIZE: '3G' }, dir);
    const mnt = await newMountpoint('blobdisk-daemon-');
    const r = await runCli(['mount', mnt, '--account', 'acct1', '--print-config']);
    expect(r.code).toBe(1); // no key yet: one clear line
    expect(r.stderr.trim()).toBe('blobdisk: --account needs exactly one of --account-key, --account-key-file or --sas (or --auth entra)');
    const shown = await runCli(['mount', mnt, '--account', 'acct1', '--print-config'], { env });
    expect(shown.code).toBe(0);
    expect(shown.stdout + shown.stderr).not.toContain(key);
    expect(shown.stdout).toMatch(/^account-key: "\*\*\*"$/m);
    expect(shown.stdout).toMatch(/^cache-size: 3G$/m);
    expect(await isMounted(mnt)).toBe(false);
  });
});
