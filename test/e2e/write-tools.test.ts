/* End to end: disk tools write images through a real FUSE mount: mkfs.ext4 and debugfs
 * on a 1 GiB page blob, qemu-img create (qcow2, raw) with qemu-io pattern writes, and
 * qemu-img convert of a local raw image to vmdk, vpc and raw; fio random writes with
 * verification. The mount drains on SIGTERM;
 * a second mount with an EMPTY cache dir then checks everything from what Azure holds:
 * e2fsck -fn, debugfs cat, qemu-io pattern reads, qemu-img check and compare.
 * Needs root, /dev/fuse, libfuse3, e2fsprogs, qemu-utils and fio. */

import type { ContainerClient } from '@azure/storage-blob';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { startAzurite, type RunningAzurite } from '../../lib/azurite';
import { randomData, removeTempDirs, sh, sha256, stopAllMounts, type RunResult, type RunningMount } from '../support/mount';
import {
  GiB,
  MiB,
  containerOn,
  flushCli,
  freshCacheDir,
  imageStatus,
  localImage,
  mountOn,
  ok,
  scratchFile,
  sdkPageBytes,
  sdkProperties,
  unmountClean,
} from '../support/write-helpers';

const CONTAINER = 'tools';

let azurite: RunningAzurite;
let container: ContainerClient;
let hot: RunningMount;
let cold: RunningMount | undefined;

/** A file written into the ext4 image with debugfs, read back from it after the cold mount. */
const FS_FILE = randomData(3 * MiB + 1234);
let fsFileLocal: string;
/** The local raw source of the conversions: 64 MiB, two data ranges, zeros elsewhere. */
let source: { file: string; bytes: Buffer };

const hotPath = (rel: string): string => path.join(hot.mnt, rel);

interface FioJob {
  error: number;
  read: { io_bytes: number };
  write: { io_bytes: number };
}

/** fio's 4 KiB O_DIRECT random writes with crc32c verification (the same blocks every run),
 *  with `extra` flags; fails the test with fio's errors unless it exited 0. */
async function fioRandomWrites(file: string, extra: string[]): Promise<FioJob> {
  const args = ['--name=rand', `--filename=${file}`, '--rw=randwrite', '--bs=4k', '--size=256M', '--io_size=32M', '--ioengine=psync', '--direct=1', '--randrepeat=1', '--verify=crc32c', '--verify_fatal=1', '--verify_state_save=0', '--output-format=json', ...extra];
  const r = await sh('fio', args, { timeoutMs: 180_000 });
  expect({ code: r.code, stderr: r.stderr.trim() }).toEqual({ code: 0, stderr: '' });
  const job = (JSON.parse(r.stdout) as { jobs: FioJob[] }).jobs[0];
  if (!job) throw new Error(`fio printed no job: ${r.stdout}`);
  return job;
}

/** qemu-io with the given commands; fails the test with its output unless every command worked. */
async function qemuIo(file: string, commands: string[], format?: string): Promise<RunResult> {
  const args = [...(format ? ['-f', format] : []), ...commands.flatMap((c) => ['-c', c]), file];
  const r = await sh('qemu-io', args, { timeoutMs: 120_000 });
  expect({ commands, code: r.code, failed: /fail|error/i.test(r.stdout + r.stderr) ? r.stdout + r.stderr : '' }).toEqual({ commands, code: 0, failed: '' });
  return r;
}

beforeAll(async () => {
  azurite = await startAzurite({ inMemory: true });
  container = await containerOn(azurite.connectionString, CONTAINER);
  fsFileLocal = await scratchFile('fs-file');
  await fsp.writeFile(fsFileLocal, FS_FILE);
  source = await localImage(64 * MiB, [
    { offset: MiB, data: randomData(3 * MiB) },
    { offset: 40_000_000, data: randomData(100_000) },
  ]);
  hot = await mountOn(azurite.connectionString, CONTAINER, await freshCacheDir());
});

afterAll(async () => {
  await stopAllMounts();
  await azurite?.stop();
  await removeTempDirs();
});

describe('tools write images; a cold mount checks what Azure holds', () => {
  test('mkfs.ext4 on a 1 GiB image uploads only what mkfs wrote, not the gigabyte; debugfs writes a file into it', async () => {
    ok(await sh('truncate', ['-s', '1G', hotPath('fs.img')]), 'truncate -s 1G fs.img');
    const mkfs = await sh('mkfs.ext4', ['-q', '-F', hotPath('fs.img')], { timeoutMs: 120_000 });
    expect({ code: mkfs.code, stderr: mkfs.stderr }).toEqual({ code: 0, stderr: '' });
    ok(await flushCli(hot), 'blobdisk flush');
    const status = await hot.status();
    const image = await imageStatus(hot, 'fs.img');
    expect({ kind: image.kind, size: image.size, dirty: image.dirtyBytes }).toEqual({ kind: 'page', size: GiB, dirty: 0 });
    // mkfs writes a few MiB of metadata and zeros its journal: zeros become Clear Pages.
    expect(image.bytesUp).toBeGreaterThan(0);
    expect(image.bytesUp).toBeLessThan(32 * MiB);
    expect(status.bytesUp).toBeLessThan(32 * MiB);
    expect(await sdkPageBytes(container, 'fs.img')).toBeLessThan(32 * MiB);

    const debugfs = await sh('debugfs', ['-w', '-R', `write ${fsFileLocal} payload`, hotPath('fs.img')]);
    expect(debugfs.code).toBe(0);
    expect(debugfs.stdout + debugfs.stderr).toMatch(/Allocated inode/);
    const fsck = await sh('e2fsck', ['-fn', hotPath('fs.img')], { timeoutMs: 120_000 });
    expect({ code: fsck.code, out: fsck.code === 0 ? '' : fsck.stdout + fsck.stderr }).toEqual({ code: 0, out: '' });
  });

  test('qemu-img create -f qcow2 and -f raw, then qemu-io writes patterns', async () => {
    ok(await sh('qemu-img', ['create', '-q', '-f', 'qcow2', hotPath('vm.qcow2'), '1G']), 'qemu-img create qcow2');
    await qemuIo(hotPath('vm.qcow2'), ['write -P 0xab 0 4M', 'write -P 0xcd 100M 1M', 'write -P 0xef 1023M 512k'], 'qcow2');
    await qemuIo(hotPath('vm.qcow2'), ['read -P 0xab 0 4M', 'read -P 0xcd 100M 1M', 'read -P 0 4M 1M'], 'qcow2');

    ok(await sh('qemu-img', ['create', '-q', '-f', 'raw', hotPath('vm.raw'), '2G']), 'qemu-img create raw');
    await qemuIo(hotPath('vm.raw'), ['write -P 0x5a 512 4k', 'write -P 0x66 1536M 3M', 'write -P 0x77 2047M 1M'], 'raw');
    await qemuIo(hotPath('vm.raw'), ['read -P 0x5a 512 4k', 'read -P 0 0 512', 'read -P 0x66 1536M 3M'], 'raw');
  });

  test('qemu-img convert -O vmdk, vpc and raw from a local raw image onto the mount', async () => {
    for (const [format, name, extra] of [
      ['vmdk', 'conv/disk.vmdk', []],
      ['vpc', 'conv/disk.vhd', ['-o', 'force_size=on']],
      ['raw', 'conv/disk.raw', []],
    ] as const) {
      if (name === 'conv/disk.vmdk') ok(await sh('mkdir', [hotPath('conv')]), 'mkdir conv');
      const r = await sh('qemu-img', ['convert', '-O', format, ...extra, source.file, hotPath(name)], { timeoutMs: 120_000 });
      expect({ format, code: r.code, stderr: r.stderr }).toEqual({ format, code: 0, stderr: '' });
      const cmp = await sh('qemu-img', ['compare', '-f', 'raw', '-F', format, source.file, hotPath(name)], { timeoutMs: 120_000 });
      expect({ format, code: cmp.code, out: cmp.stdout.trim() }).toEqual({ format, code: 0, out: 'Images are identical.' });
    }
  });

  test('fio: 4 KiB O_DIRECT random writes over many more grains than the mount keeps open, verified as written', async () => {
    ok(await sh('truncate', ['-s', '256M', hotPath('fio.img')]), 'truncate -s 256M fio.img');
    // 8192 writes at random over 256 grains: nearly every one opens a grain file; fio reads
    // every block back and checks its crc32c header and content.
    const job = await fioRandomWrites(hotPath('fio.img'), ['--do_verify=1']);
    expect({ error: job.error, written: job.write.io_bytes, read: job.read.io_bytes }).toEqual({ error: 0, written: 32 * MiB, read: 32 * MiB });
  });

  test('unmount drains every image', async () => {
    await unmountClean(hot);
    for (const name of ['fs.img', 'vm.qcow2', 'vm.raw', 'conv/disk.vmdk', 'conv/disk.vhd', 'conv/disk.raw', 'fio.img']) {
      expect({ name, type: (await sdkProperties(container, name)).type }).toEqual({ name, type: 'PageBlob' });
    }
    cold = await mountOn(azurite.connectionString, CONTAINER, await freshCacheDir());
  });

  const coldPath = (rel: string): string => path.join(cold?.mnt ?? '/nonexistent', rel);

  test('cold mount: e2fsck -fn is clean and debugfs reads the file back', async () => {
    const fsck = await sh('e2fsck', ['-fn', coldPath('fs.img')], { timeoutMs: 120_000 });
    expect({ code: fsck.code, out: fsck.code === 0 ? '' : fsck.stdout + fsck.stderr }).toEqual({ code: 0, out: '' });
    const out = await scratchFile('payload');
    const cat = await sh('debugfs', ['-R', `dump payload ${out}`, coldPath('fs.img')]);
    expect(cat.code).toBe(0);
    expect(sha256(await fsp.readFile(out))).toBe(sha256(FS_FILE));
    // Nothing was fetched that mkfs had not written (a 1 GiB image, a few MiB of data).
    const status = await cold?.status();
    expect(status?.bytesDown ?? 0).toBeLessThan(64 * MiB);
  });

  test('cold mount: qemu-io reads the patterns and qemu-img check is clean', async () => {
    await qemuIo(coldPath('vm.qcow2'), ['read -P 0xab 0 4M', 'read -P 0xcd 100M 1M', 'read -P 0xef 1023M 512k', 'read -P 0 4M 1M', 'read -P 0 512M 1M'], 'qcow2');
    const check = await sh('qemu-img', ['check', coldPath('vm.qcow2')]);
    expect({ code: check.code, out: check.stdout.split('\n')[0] }).toEqual({ code: 0, out: 'No errors were found on the image.' });
    const info = await sh('qemu-img', ['info', '--output=json', coldPath('vm.qcow2')]);
    expect(JSON.parse(info.stdout)).toMatchObject({ format: 'qcow2', 'virtual-size': GiB });

    await qemuIo(coldPath('vm.raw'), ['read -P 0x5a 512 4k', 'read -P 0 0 512', 'read -P 0 4608 1M', 'read -P 0x66 1536M 3M', 'read -P 0x77 2047M 1M'], 'raw');
  });

  test('cold mount: fio verifies every block its random writes left in Azure', async () => {
    const job = await fioRandomWrites(coldPath('fio.img'), ['--verify_only']);
    expect({ error: job.error, read: job.read.io_bytes }).toEqual({ error: 0, read: 32 * MiB });
  });

  test('cold mount: qemu-img compare of each conversion with the source: identical', async () => {
    for (const [format, name] of [['vmdk', 'conv/disk.vmdk'], ['vpc', 'conv/disk.vhd'], ['raw', 'conv/disk.raw']] as const) {
      const cmp = await sh('qemu-img', ['compare', '-f', 'raw', '-F', format, source.file, coldPath(name)], { timeoutMs: 120_000 });
      expect({ format, code: cmp.code, out: (cmp.stdout + cmp.stderr).trim() }).toEqual({ format, code: 0, out: 'Images are identical.' });
    }
    if (cold) await unmountClean(cold);
  });
});
