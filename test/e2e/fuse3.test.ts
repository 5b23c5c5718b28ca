/* End to end: blobdisk's libfuse 3 binding (lib/fuse/fuse3.ts over native/fuse3.c) on its
 * own, serving a small in-memory filesystem from this process to real tools run as child
 * processes (asynchronously: the requests are answered on this event loop). It checks the
 * callback shapes ops.ts relies on, 1 MiB requests, fallocate's arguments, that a throwing
 * or twice-answering operation cannot break a request, that requests run side by side, and
 * that unmount lets go. Needs root, /dev/fuse and libfuse3. */

import path from 'node:path';
import { Fuse3, type Operations, type Stat } from '../../lib/fuse/fuse3';
import { unmountCommands } from '../../lib/fuse/clear';
import { isMounted, newMountpoint, randomData, removeTempDirs, sh, sleep, within } from '../support/mount';
import { expectBytes, ok, readAll, scratchFile } from '../support/write-helpers';
import fsp from 'node:fs/promises';

const MiB = 1024 * 1024;
const ENOENT = -2;

let data = Buffer.alloc(0);
const calls: { op: string; args: unknown[] }[] = [];
let largestWrite = 0;
let inFlight = 0;
let mostInFlight = 0;
let slowReadsMs = 0;
const dirs = new Set<string>();

const stat = (mode: number, size: number): Stat => ({ mode, uid: 0, gid: 0, size, nlink: 1, blocks: Math.ceil(size / 512), atime: 0, mtime: Date.now(), ctime: Date.now() });

const ops: Operations = {
  getattr: (p, cb) => {
    if (p === '/') return cb(0, stat(0o040755, 0));
    if (p === '/f.img') return cb(0, stat(0o100644, data.length));
    if (dirs.has(p)) return cb(0, stat(0o040755, 0));
    return cb(ENOENT);
  },
  readdir: (_p, cb) => cb(0, ['.', '..', 'f.img']),
  open: (p, _flags, cb) => (p === '/f.img' ? cb(0, 42) : cb(ENOENT)),
  read: (_p, fd, buf, len, pos, cb) => {
    const answer = (): void => {
      inFlight--;
      const n = Math.max(0, Math.min(len, data.length - pos));
      data.copy(buf, 0, pos, pos + n);
      cb(n);
    };
    expect(fd).toBe(42);
    inFlight++;
    mostInFlight = Math.max(mostInFlight, inFlight);
    if (slowReadsMs > 0) setTimeout(answer, slowReadsMs);
    else answer();
  },
  write: (_p, _fd, buf, len, pos, cb) => {
    largestWrite = Math.max(largestWrite, len);
    if (pos + len > data.length) data = Buffer.concat([data, Buffer.alloc(pos + len - data.length)]);
    buf.copy(data, pos, 0, len);
    // Answered later, as blobdisk's writes are: the buffer stays valid until the answer.
    setImmediate(() => cb(len));
  },
  truncate: () => {
    throw new Error('a bug in an operation');
  },
  ftruncate: () => {
    throw new Error('a bug in an operation');
  },
  mkdir: (p, mode, cb) => {
    calls.push({ op: 'mkdir', args: [p, mode] });
    dirs.add(p);
    cb(0);
    cb(-5); // a second answer is ignored
  },
  fallocate: (p, mode, offset, length, fd, cb) => {
    calls.push({ op: 'fallocate', args: [p, mode, offset, length, fd] });
    cb(mode === 3 ? 0 : -95);
  },
  release: (_p, _fd, cb) => cb(0),
};

let fuse: Fuse3;
let mnt: string;
const file = (): string => path.join(mnt, 'f.img');

beforeAll(async () => {
  mnt = await newMountpoint('blobdisk-fuse3-');
  fuse = await Fuse3.mount(mnt, ops, { options: ['fsname=fuse3test', 'subtype=fuse3test'], writeback: false });
});

afterAll(async () => {
  if (await isMounted(mnt)) await fuse.unmount();
  await removeTempDirs();
});

test('mounts with 1 MiB requests and serves ls, dd and cat with the callback shapes of ops.ts', async () => {
  expect(fuse.connection.maxWrite).toBe(MiB);
  expect(await isMounted(mnt)).toBe(true);
  expect(ok(await sh('ls', [mnt]), 'ls').stdout.trim()).toBe('f.img');
  const bytes = randomData(3 * MiB);
  const src = await scratchFile('fuse3-src');
  await fsp.writeFile(src, bytes);
  ok(await sh('dd', [`if=${src}`, `of=${file()}`, 'bs=1M', 'oflag=direct', 'conv=notrunc', 'status=none']), 'dd oflag=direct bs=1M');
  expect(largestWrite).toBe(MiB);
  expectBytes(await readAll(file()), bytes, 'cat of what dd wrote');
  expect(ok(await sh('stat', ['-c', '%s', file()]), 'stat').stdout.trim()).toBe(String(3 * MiB));
}, 60_000);

test('fallocate reaches the operation with its mode, range and the open file handle, and answers its errno', async () => {
  ok(await sh('fallocate', ['--punch-hole', '--offset', '4096', '--length', '8192', file()]), 'fallocate --punch-hole');
  // The operation's own errno comes back to the tool (here for FALLOC_FL_ZERO_RANGE).
  const r = await sh('fallocate', ['--zero-range', '--offset', '0', '--length', '4096', file()]);
  expect(r.stderr).toMatch(/Operation not supported/);
  expect(calls.filter((c) => c.op === 'fallocate').map((c) => c.args)).toEqual([
    ['/f.img', 3, 4096, 8192, 42],
    ['/f.img', 0x10, 0, 4096, 42],
  ]);
}, 30_000);

test('an operation that throws answers EIO; a second answer is ignored', async () => {
  const r = await sh('truncate', ['-s', '0', file()]);
  expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 1, stderr: expect.stringMatching(/Input\/output error/) });
  ok(await sh('mkdir', [path.join(mnt, 'd')]), 'mkdir answered 0, then -EIO');
  expect(calls.find((c) => c.op === 'mkdir')?.args[0]).toBe('/d');
  // The mount still serves after both.
  expect(ok(await sh('stat', ['-c', '%s', file()]), 'stat').stdout.trim()).toBe(String(3 * MiB));
}, 30_000);

test('requests are served side by side: slow reads from 6 readers are in flight together', async () => {
  slowReadsMs = 300;
  mostInFlight = 0;
  const readers = Array.from({ length: 6 }, (_, i) =>
    sh('dd', [`if=${file()}`, 'of=/dev/null', 'bs=4k', 'count=1', `skip=${i * 64}`, 'iflag=direct', 'status=none']),
  );
  for (const r of await Promise.all(readers)) ok(r, 'dd iflag=direct');
  slowReadsMs = 0;
  expect(mostInFlight).toBeGreaterThanOrEqual(2);
}, 60_000);

test('an outside unmount ends the session; unmount() after it resolves at once', async () => {
  const other = await newMountpoint('blobdisk-fuse3-');
  const second = await Fuse3.mount(other, ops, { options: [], writeback: false });
  const [cmd, args] = unmountCommands(other)[0] ?? ['umount', [other]];
  ok(await sh(cmd, args), 'outside unmount');
  expect(await within(second.closed.then(() => 'ended'), 10_000, 'still running')).toBe('ended');
  expect(await second.unmount()).toBe(true);
  expect(await isMounted(other)).toBe(false);
}, 30_000);

test('unmount lets go of the mountpoint; mounting on a missing directory fails with a reason', async () => {
  const t0 = Date.now();
  await fuse.unmount();
  expect(await isMounted(mnt)).toBe(false);
  expect(Date.now() - t0).toBeLessThan(10_000);
  await sleep(10);
  await expect(Fuse3.mount(path.join(mnt, 'missing'), ops, { options: [], writeback: false })).rejects.toThrow(/refused|mount/);
}, 30_000);
