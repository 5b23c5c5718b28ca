/* The bare-FUSE baseline: a minimal fuse-native filesystem with one read-only file held
 * in a Buffer, mounted with the same FUSE options as blobdisk (lib/mount.ts). Reading it
 * measures what fuse-native on this machine can serve at best, so the warm read of
 * blobdisk can be put in proportion to it.
 *
 *   node dist/bench/barefs.js <mountpoint> <data file> <file name>
 * Prints "barefs: mounted <mountpoint>" on stderr when ready; SIGTERM or SIGINT unmounts. */

import Fuse from 'fuse-native';
import { readFile } from 'node:fs/promises';

const ENOENT = -2;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;

function stat(mode: number, size: number): Fuse.Stat {
  const now = new Date();
  return { mode, uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0, size, nlink: 1, blocks: Math.ceil(size / 512), atime: now, mtime: now, ctime: now };
}

async function main(argv: string[]): Promise<void> {
  const [mountpoint, dataFile, name] = argv;
  if (mountpoint === undefined || dataFile === undefined || name === undefined) {
    throw new Error('usage: barefs <mountpoint> <data file> <file name>');
  }
  const data = await readFile(dataFile);
  const filePath = `/${name}`;
  const ops: Fuse.Operations = {
    init: (cb) => cb(0),
    getattr: (p, cb) => {
      if (p === '/') return cb(0, stat(S_IFDIR | 0o555, 4096));
      if (p === filePath) return cb(0, stat(S_IFREG | 0o444, data.length));
      cb(ENOENT);
    },
    readdir: (p, cb) => (p === '/' ? cb(0, ['.', '..', name]) : cb(ENOENT)),
    open: (p, _flags, cb) => (p === filePath ? cb(0, 1) : cb(ENOENT)),
    read: (_p, _fd, buf, len, pos, cb) => {
      const n = Math.max(0, Math.min(len, data.length - pos));
      if (n > 0) data.copy(buf, 0, pos, pos + n);
      cb(n);
    },
    release: (_p, _fd, cb) => cb(0),
  };
  // The same options as blobdisk's mount: big_writes through fsname, 1 MiB max_read, no timeout.
  const fuse = new Fuse(mountpoint, ops, { fsname: 'barefs,big_writes', subtype: 'barefs', maxRead: 1024 * 1024, timeout: false });
  await new Promise<void>((resolve, reject) => fuse.mount((err) => (err ? reject(err) : resolve())));
  process.stderr.write(`barefs: mounted ${mountpoint}\n`);
  await new Promise<void>((resolve) => {
    process.once('SIGTERM', resolve);
    process.once('SIGINT', resolve);
  });
  await new Promise<void>((resolve, reject) => fuse.unmount((err) => (err ? reject(err) : resolve())));
  process.stderr.write(`barefs: unmounted ${mountpoint}\n`);
}

main(process.argv.slice(2)).catch((e: unknown) => {
  process.stderr.write(`barefs: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exitCode = 1;
});
