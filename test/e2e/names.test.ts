/* End to end: the mount as a directory of image files. mv (files, directories, across
 * containers, over an existing file, with data not yet uploaded and with the file open),
 * open flags (O_APPEND, O_TRUNC, O_EXCL, O_DIRECT through dd and qemu-io -n), VMDK
 * descriptor + extent pairs made by qemu-img, chmod/chown/touch, df, and a container of
 * 10,000 blobs. Azure's state is checked by direct SDK listings and downloads.
 * Needs root, /dev/fuse, libfuse3 and qemu-utils. */

import type { ContainerClient } from '@azure/storage-blob';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { startAzurite, type RunningAzurite } from '../../lib/azurite';
import { randomData, removeTempDirs, sh, statOf, stopAllMounts, type RunningMount } from '../support/mount';
import {
  KiB,
  MiB,
  containerOn,
  ddWrite,
  expectBytes,
  flushCli,
  freshCacheDir,
  imageStatus,
  mountOn,
  ok,
  patched,
  readAll,
  sdkDownload,
  sdkProperties,
  unmountClean,
} from '../support/write-helpers';

const MAIN = 'names';
const OTHER = 'names-other';

let azurite: RunningAzurite;
let main: ContainerClient;
let other: ContainerClient;

async function blobNames(container: ContainerClient, prefix = ''): Promise<string[]> {
  const names: string[] = [];
  for await (const b of container.listBlobsFlat({ prefix })) names.push(b.name);
  return names.sort();
}

/** Runs `script` with bash in a child process, "$1" being the mount point. */
function bash(mnt: string, script: string) {
  return sh('bash', ['-c', script, 'bash', mnt], { timeoutMs: 120_000 });
}

/** Runs a small Node program in a child process (it may use blocking fs calls on the mount). */
function node(program: string, ...args: string[]) {
  return sh(process.execPath, ['-e', program, ...args], { timeoutMs: 60_000 });
}

beforeAll(async () => {
  azurite = await startAzurite({ inMemory: true });
  main = await containerOn(azurite.connectionString, MAIN);
  other = await containerOn(azurite.connectionString, OTHER);
});

afterAll(async () => {
  await stopAllMounts();
  await azurite?.stop();
  await removeTempDirs();
});

describe('one mount of the whole account (uploads held back, so renamed files carry dirty data)', () => {
  let mount: RunningMount;
  const at = (rel: string): string => path.join(mount.mnt, rel);
  /** What each blob must hold in Azure once the mount drained. */
  const expected = new Map<string, Buffer>();

  beforeAll(async () => {
    mount = await mountOn(azurite.connectionString, undefined, await freshCacheDir(), ['--grain-size', '64K', '--write-back-delay', '3600']);
  });

  test('mv of a file with data not yet uploaded: renamed, into a folder, across containers; uploaded once, to the last name', async () => {
    const data = randomData(300 * KiB + 77);
    ok(await ddWrite(at(`${MAIN}/a.img`), 0, data), 'dd a.img');
    expect((await imageStatus(mount, `${MAIN}/a.img`)).dirtyBytes).toBeGreaterThan(0);
    ok(await bash(mount.mnt, `cd "$1/${MAIN}" && mv a.img b.img && mkdir -p vms/web && mv b.img vms/web/ && mv vms/web/b.img "$1/${OTHER}/c.img"`), 'mv chain');
    const ls = await bash(mount.mnt, `ls "$1/${MAIN}" "$1/${MAIN}/vms/web" "$1/${OTHER}"`);
    expect(ls.stdout.split('\n').filter((l) => l !== '' && !l.endsWith(':'))).toEqual(['vms', 'c.img']);
    expectBytes(await readAll(at(`${OTHER}/c.img`)), data, 'c.img read back after three renames');
    const status = await imageStatus(mount, `${OTHER}/c.img`);
    expect({ dirty: status.dirtyBytes > 0, up: status.bytesUp }).toEqual({ dirty: true, up: 0 });
    ok(await flushCli(mount, at(`${OTHER}/c.img`)), 'flush c.img');
    expect((await imageStatus(mount, `${OTHER}/c.img`)).bytesUp).toBeLessThan(data.length + 64 * KiB);
    // A page blob: Azure holds whole pages, the logical size travels in metadata (copied too).
    const props = await sdkProperties(other, 'c.img');
    expect({ type: props.type, size: props.size, logical: props.metadata.blobdisk_size }).toEqual({ type: 'PageBlob', size: 300 * KiB + 512, logical: String(data.length) });
    expectBytes((await sdkDownload(other, 'c.img')).subarray(0, data.length), data, 'c.img in Azure');
    expect(await blobNames(main)).toEqual(['vms', 'vms/web']);
  });

  test('rm deletes the blob and what the cache holds of it, data not yet uploaded included', async () => {
    const before = await mount.status();
    ok(await ddWrite(at(`${MAIN}/rmme.img`), 0, randomData(700 * KiB)), 'dd rmme.img');
    expect((await imageStatus(mount, `${MAIN}/rmme.img`)).dirtyBytes).toBeGreaterThan(0);
    ok(await bash(mount.mnt, `rm "$1/${MAIN}/rmme.img"`), 'rm');
    expect((await bash(mount.mnt, `ls "$1/${MAIN}"`)).stdout.split('\n')).not.toContain('rmme.img');
    const after = await mount.status();
    expect(after.images.map((i) => i.path)).not.toContain(`${MAIN}/rmme.img`);
    expect({ dirty: after.cacheDirtyBytes, used: after.cacheUsedBytes }).toEqual({ dirty: before.cacheDirtyBytes, used: before.cacheUsedBytes });
    expect(await main.getBlobClient('rmme.img').exists()).toBe(false);
  });

  test('a file open across its rename keeps reading and writing, under the new name', async () => {
    const data = randomData(200 * KiB);
    ok(await ddWrite(at(`${MAIN}/open.bin`), 0, data), 'dd open.bin');
    const r = await node(
      `const fs = require('fs');
       const [from, to] = process.argv.slice(1);
       const fd = fs.openSync(from, 'r+');
       fs.renameSync(from, to);
       fs.writeSync(fd, Buffer.from('written after the rename'), 0, 24, 1000);
       const back = Buffer.alloc(24);
       fs.readSync(fd, back, 0, 24, 1000);
       fs.fsyncSync(fd);
       fs.closeSync(fd);
       process.stdout.write(back.toString());`,
      at(`${MAIN}/open.bin`),
      at(`${MAIN}/vms/moved.bin`),
    );
    expect({ code: r.code, out: r.stdout, err: r.stderr }).toEqual({ code: 0, out: 'written after the rename', err: '' });
    const want = patched(data, 1000, Buffer.from('written after the rename'));
    expectBytes(await readAll(at(`${MAIN}/vms/moved.bin`)), want, 'moved.bin');
    expected.set(`${MAIN}/vms/moved.bin`, want);
  });

  test('mv over an existing file replaces it; what POSIX refuses is refused', async () => {
    const a = randomData(70 * KiB);
    ok(await ddWrite(at(`${MAIN}/x.bin`), 0, a), 'dd x.bin');
    ok(await ddWrite(at(`${MAIN}/y.bin`), 0, randomData(10 * KiB)), 'dd y.bin');
    ok(await bash(mount.mnt, `mv "$1/${MAIN}/x.bin" "$1/${MAIN}/y.bin"`), 'mv x.bin y.bin');
    expectBytes(await readAll(at(`${MAIN}/y.bin`)), a, 'y.bin after mv x.bin y.bin');
    expect(await statOf(at(`${MAIN}/y.bin`), '%s')).toBe(String(a.length));
    expected.set(`${MAIN}/y.bin`, a);

    ok(await bash(mount.mnt, `mkdir -p "$1/${MAIN}/full/inner" && echo z > "$1/${MAIN}/full/inner/z.txt" && mkdir "$1/${MAIN}/empty"`), 'mkdir');
    expected.set(`${MAIN}/full/inner/z.txt`, Buffer.from('z\n'));
    const refused: [string, string, RegExp][] = [
      ['a directory onto a non-empty one', `mv -T "$1/${MAIN}/empty" "$1/${MAIN}/full"`, /not empty/i],
      ['a directory into itself', `mv "$1/${MAIN}/full" "$1/${MAIN}/full/inner/"`, /subdirectory of itself/i],
      ['a file onto a directory', `mv -T "$1/${MAIN}/y.bin" "$1/${MAIN}/empty"`, /directory/i],
      ['a missing file', `mv "$1/${MAIN}/nothing.bin" "$1/${MAIN}/else.bin"`, /No such file/],
      ['into a missing folder', `mv "$1/${MAIN}/y.bin" "$1/${MAIN}/nowhere/y.bin"`, /No such file/],
    ];
    for (const [what, script, message] of refused) {
      const r = await bash(mount.mnt, script);
      expect({ what, failed: r.code !== 0, said: message.test(r.stderr) ? 'as expected' : r.stderr }).toEqual({ what, failed: true, said: 'as expected' });
    }
    expectBytes(await readAll(at(`${MAIN}/y.bin`)), a, 'y.bin after the refused renames');
  });

  test('mv of a directory moves every blob under it, folder markers too, then across containers', async () => {
    const files = { 'tree/disk.img': randomData(130 * KiB), 'tree/sub/disk.vmdk': randomData(5 * KiB), 'tree/sub/deeper/notes.txt': Buffer.from('notes\n') };
    ok(await bash(mount.mnt, `mkdir -p "$1/${MAIN}/tree/sub/deeper" "$1/${MAIN}/tree/emptydir"`), 'mkdir tree');
    for (const [rel, data] of Object.entries(files)) ok(await ddWrite(at(`${MAIN}/${rel}`), 0, data), `dd ${rel}`);
    ok(await bash(mount.mnt, `mv "$1/${MAIN}/tree" "$1/${MAIN}/vms/tree2"`), 'mv tree');
    const find = await bash(mount.mnt, `cd "$1/${MAIN}/vms/tree2" && find . | sort`);
    expect(find.stdout.split('\n').filter(Boolean)).toEqual(['.', './disk.img', './emptydir', './sub', './sub/deeper', './sub/deeper/notes.txt', './sub/disk.vmdk']);
    expect((await bash(mount.mnt, `ls "$1/${MAIN}/tree"`)).code).not.toBe(0);
    ok(await bash(mount.mnt, `mv "$1/${MAIN}/vms/tree2" "$1/${OTHER}/tree3"`), 'mv across containers');
    for (const [rel, data] of Object.entries(files)) {
      const moved = rel.replace(/^tree\//, 'tree3/');
      expectBytes(await readAll(at(`${OTHER}/${moved}`)), data, moved);
      expected.set(`${OTHER}/${moved}`, data);
    }
    expect(await blobNames(main, 'vms/tree')).toEqual([]);
    expect(await blobNames(main, 'tree')).toEqual([]);
    const markers = await blobNames(other, 'tree3');
    expect(markers).toEqual(expect.arrayContaining(['tree3/emptydir', 'tree3/sub', 'tree3/sub/deeper']));
  });

  test('O_APPEND, O_TRUNC and O_EXCL|O_CREAT are honoured', async () => {
    ok(await bash(mount.mnt, `cd "$1/${MAIN}" && printf 'one\\n' > log.txt && printf 'two\\n' >> log.txt && printf 'three\\n' >> log.txt`), 'append');
    expect((await readAll(at(`${MAIN}/log.txt`))).toString()).toBe('one\ntwo\nthree\n');
    ok(await bash(mount.mnt, `printf 'new\\n' > "$1/${MAIN}/log.txt"`), 'truncate by >');
    expect((await readAll(at(`${MAIN}/log.txt`))).toString()).toBe('new\n');
    expected.set(`${MAIN}/log.txt`, Buffer.from('new\n'));
    const excl = await node(
      `const fs = require('fs');
       const out = [];
       for (const f of process.argv.slice(1)) {
         try { fs.closeSync(fs.openSync(f, 'wx')); out.push('created'); } catch (e) { out.push(e.code); }
       }
       process.stdout.write(out.join(' '));`,
      at(`${MAIN}/log.txt`),
      at(`${MAIN}/fresh.txt`),
      at(`${MAIN}/fresh.txt`),
    );
    expect(excl.stdout).toBe('EEXIST created EEXIST');
    expected.set(`${MAIN}/fresh.txt`, Buffer.alloc(0));
  });

  test('O_DIRECT: dd oflag=direct and qemu-io -n (cache=none) write and read back', async () => {
    const data = randomData(MiB);
    const src = path.join(await fsp.mkdtemp('/tmp/blobdisk-direct-'), 'src');
    await fsp.writeFile(src, data);
    ok(await sh('truncate', ['-s', String(8 * MiB), at(`${MAIN}/direct.img`)]), 'truncate direct.img');
    ok(await sh('dd', [`if=${src}`, `of=${at(`${MAIN}/direct.img`)}`, 'bs=64K', 'seek=16', 'oflag=direct', 'conv=notrunc', 'status=none']), 'dd oflag=direct');
    const io = await sh('qemu-io', ['-n', '-f', 'raw', '-c', 'write -P 0x5a 4M 1M', '-c', 'read -P 0x5a 4M 1M', '-c', 'read -P 0 0 1M', at(`${MAIN}/direct.img`)]);
    expect({ code: io.code, failed: /fail|error|mismatch/i.test(io.stdout + io.stderr) }).toEqual({ code: 0, failed: false });
    const back = await sh('dd', [`if=${at(`${MAIN}/direct.img`)}`, 'bs=64K', 'skip=16', 'count=16', 'iflag=direct', 'status=none', `of=${src}.back`]);
    ok(back, 'dd iflag=direct');
    expectBytes(await fsp.readFile(`${src}.back`), data, 'direct read of the direct write');
    let want = patched(Buffer.alloc(8 * MiB), MiB, data);
    want = patched(want, 4 * MiB, Buffer.alloc(MiB, 0x5a));
    expected.set(`${MAIN}/direct.img`, want);
  });

  test('chmod, chown and touch -d succeed and change nothing: mode, owner and times come from Azure', async () => {
    const before = await statOf(at(`${MAIN}/y.bin`), '%A %u %g %Y');
    ok(await bash(mount.mnt, `f="$1/${MAIN}/y.bin"; chmod 600 "$f" && chown 1234:1234 "$f" && touch -d '2001-02-03 04:05:06' "$f" && touch "$f"`), 'chmod chown touch');
    expect(await statOf(at(`${MAIN}/y.bin`), '%A %u %g %Y')).toBe(before);
    expect(await statOf(at(`${MAIN}/y.bin`), '%A')).toBe('-rw-r--r--');
  });

  test('df reports a large volume with free space and sensible block sizes', async () => {
    const r = await sh('stat', ['-f', '-c', '%S %b %a %l', mount.mnt]);
    const [frsize, blocks, avail, namemax] = r.stdout.trim().split(' ').map(Number) as [number, number, number, number];
    expect(frsize * blocks).toBeGreaterThanOrEqual(2 ** 40);
    expect(avail).toBeGreaterThan(0);
    expect(avail).toBeLessThanOrEqual(blocks);
    expect(namemax).toBe(255);
    ok(await sh('df', ['-h', mount.mnt]), 'df -h');
  });

  test('unmount drains: Azure holds every file under its final name, and nothing under the old ones', async () => {
    await unmountClean(mount);
    for (const [rel, want] of expected) {
      const [c, ...rest] = rel.split('/');
      const blob = rest.join('/');
      expectBytes(await sdkDownload(c === MAIN ? main : other, blob), want, `${rel} in Azure`);
    }
    for (const gone of ['a.img', 'b.img', 'vms/web/b.img', 'open.bin', 'x.bin', 'tree/disk.img', 'vms/tree2/disk.img']) {
      expect({ gone, exists: await main.getBlobClient(gone).exists() }).toEqual({ gone, exists: false });
    }
  });
});

describe('names that cannot be paths, paths that cannot be blob names', () => {
  test('unshowable blob names are left out with one warning each; invalid new names get EINVAL', async () => {
    const odd = await containerOn(azurite.connectionString, 'odd-names');
    const long = `odd/${'x'.repeat(300)}.bin`;
    for (const name of ['odd/ok.bin', 'odd//double.bin', long]) await odd.getBlockBlobClient(name).upload('data', 4);
    // Listings are trusted for 1 s here: the folder is listed again after that.
    const m = await mountOn(azurite.connectionString, 'odd-names', await freshCacheDir(), ['--dir-cache-time', '1']);
    try {
      for (let i = 0; i < 2; i++) {
        const ls = ok(await bash(m.mnt, 'ls -a "$1/odd"'), 'ls odd');
        expect(ls.stdout.split('\n').filter(Boolean)).toEqual(['.', '..', 'ok.bin']);
        await new Promise((r) => setTimeout(r, 1_500)); // past the listing cache: listed again
      }
      const warned = m.stderr().split('\n').filter((l) => /cannot be shown as a path/.test(l));
      expect(warned).toHaveLength(2);
      const refused: [string, string][] = [
        ['a name ending in a dot', 'touch "$1/odd/bad."'],
        ['a backslash', 'mkdir "$1/odd/back\\slash"'],
        ['a control character', `touch "$1/odd/tab$(printf '\t')name"`],
      ];
      for (const [what, script] of refused) {
        const r = await bash(m.mnt, script);
        expect({ what, failed: r.code !== 0, einval: /Invalid argument/.test(r.stderr) || r.stderr }).toEqual({ what, failed: true, einval: true });
      }
      // mv words rename(2)'s EINVAL as "a subdirectory of itself".
      const mv = await bash(m.mnt, 'mv "$1/odd/ok.bin" "$1/odd/ok.bin."');
      expect({ failed: mv.code !== 0, einval: /subdirectory of itself|Invalid argument/.test(mv.stderr) || mv.stderr }).toEqual({ failed: true, einval: true });
      expect(await blobNames(odd)).toEqual(['odd//double.bin', long, 'odd/ok.bin'].sort());
    } finally {
      await unmountClean(m);
    }
  });
});

describe('VMDK images made by qemu-img on the mount', () => {
  test.each(['monolithicFlat', 'monolithicSparse'])('%s: qemu-io writes, then after a cold remount qemu-img check and info accept it and the data reads back', async (subformat) => {
    const dir = `vmdk-${subformat}`;
    let m = await mountOn(azurite.connectionString, MAIN, await freshCacheDir(), ['--grain-size', '64K']);
    const file = (): string => path.join(m.mnt, dir, 'disk.vmdk');
    try {
      ok(await bash(m.mnt, `mkdir "$1/${dir}"`), 'mkdir');
      ok(await sh('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', `subformat=${subformat}`, file(), '64M']), 'qemu-img create');
      ok(await sh('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0xa5 1M 3M', '-c', 'write -P 0x3c 60M 17k', file()]), 'qemu-io write');
      await unmountClean(m);
    } finally {
      await m.stop();
    }
    const names = await blobNames(main, `${dir}/`);
    expect(names).toEqual(subformat === 'monolithicFlat' ? [`${dir}/disk-flat.vmdk`, `${dir}/disk.vmdk`] : [`${dir}/disk.vmdk`]);
    if (subformat === 'monolithicFlat') {
      // The descriptor is a few hundred bytes of text naming its extent.
      const descriptor = (await sdkDownload(main, `${dir}/disk.vmdk`)).toString();
      expect(descriptor).toMatch(/RW 131072 FLAT "disk-flat\.vmdk" 0/);
    }

    m = await mountOn(azurite.connectionString, MAIN, await freshCacheDir(), ['--grain-size', '64K']);
    try {
      const check = await sh('qemu-img', ['check', '-f', 'vmdk', file()]);
      expect({ code: check.code, out: check.stdout.split('\n')[0] }).toEqual({ code: 0, out: 'No errors were found on the image.' });
      const info = JSON.parse(ok(await sh('qemu-img', ['info', '--output=json', file()]), 'qemu-img info').stdout) as { format: string; 'virtual-size': number };
      expect({ format: info.format, size: info['virtual-size'] }).toEqual({ format: 'vmdk', size: 64 * MiB });
      const read = await sh('qemu-io', ['-f', 'vmdk', '-r', '-c', 'read -P 0xa5 1M 3M', '-c', 'read -P 0x3c 60M 17k', '-c', 'read -P 0 0 1M', file()]);
      expect({ code: read.code, failed: /fail|error|mismatch/i.test(read.stdout + read.stderr) }).toEqual({ code: 0, failed: false });
    } finally {
      await unmountClean(m);
    }
  });
});

describe('a container of 10,000 blobs in several folders', () => {
  const FOLDERS = 4;
  const PER_FOLDER = 2500;

  beforeAll(async () => {
    const big = await containerOn(azurite.connectionString, 'many');
    const names: string[] = [];
    for (let f = 0; f < FOLDERS; f++) for (let i = 0; i < PER_FOLDER; i++) names.push(`f${f}/blob-${String(i).padStart(5, '0')}.txt`);
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < names.length) {
        const name = names[next++] ?? '';
        await big.getBlockBlobClient(name).upload(name, name.length);
      }
    };
    await Promise.all(Array.from({ length: 32 }, worker));
  }, 300_000);

  test('ls pages through Azure; a second ls -l within the cache time asks Azure nothing', async () => {
    const m = await mountOn(azurite.connectionString, 'many', await freshCacheDir(), ['--dir-cache-time', '120']);
    try {
      expect((await bash(m.mnt, 'ls "$1"')).stdout.split('\n').filter(Boolean)).toEqual(['f0', 'f1', 'f2', 'f3']);
      let total = 0;
      for (let f = 0; f < FOLDERS; f++) {
        const r = ok(await bash(m.mnt, `ls -l "$1/f${f}"`), `ls -l f${f}`);
        total += r.stdout.split('\n').filter((l) => l.startsWith('-')).length;
      }
      expect(total).toBe(FOLDERS * PER_FOLDER);
      const requests = (await m.status()).requests;
      const again = ok(await bash(m.mnt, 'ls -l "$1"/f*'), 'second ls -l');
      expect(again.stdout.split('\n').filter((l) => l.startsWith('-')).length).toBe(FOLDERS * PER_FOLDER);
      expect((await m.status()).requests).toBe(requests);
      expect((await readAll(path.join(m.mnt, 'f2', 'blob-01234.txt'))).toString()).toBe('f2/blob-01234.txt');
    } finally {
      await unmountClean(m);
    }
  }, 300_000);
});
