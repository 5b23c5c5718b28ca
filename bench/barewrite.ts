/* The bare-FUSE write baseline: a minimal fuse-native filesystem with one writable file
 * kept in memory, mounted with blobdisk's FUSE options. Writing it measures what
 * fuse-native on this machine accepts at best, against which blobdisk's acknowledged
 * writes are put in proportion.
 *
 *   node dist/bench/barewrite.js <mountpoint>
 * Prints "barewrite: mounted" on stderr when ready; SIGTERM unmounts. */

import Fuse from 'fuse-native';

const ENOENT = -2;
const chunks = new Map<number, Buffer>(); // 1 MiB pieces, so the file can grow cheaply
const CHUNK = 1024 * 1024;
let size = 0;
let exists = false;

function stat(mode: number, bytes: number): Fuse.Stat {
  const now = new Date();
  return { mode, uid: 0, gid: 0, size: bytes, nlink: 1, blocks: Math.ceil(bytes / 512), atime: now, mtime: now, ctime: now };
}

/** Sets the file's size; memory past it is given back (a new file starts from fresh memory,
 *  as blobdisk's starts from fresh grains). */
function resize(bytes: number): void {
  for (const idx of chunks.keys()) {
    if (idx * CHUNK >= bytes) chunks.delete(idx);
    else if ((idx + 1) * CHUNK > bytes) chunks.get(idx)?.fill(0, bytes - idx * CHUNK);
  }
  size = bytes;
}

function write(buf: Buffer, len: number, pos: number): void {
  for (let done = 0; done < len; ) {
    const idx = Math.floor((pos + done) / CHUNK);
    const at = (pos + done) % CHUNK;
    let chunk = chunks.get(idx);
    if (!chunk) chunks.set(idx, (chunk = Buffer.alloc(CHUNK)));
    const n = Math.min(len - done, CHUNK - at);
    buf.copy(chunk, at, done, done + n);
    done += n;
  }
  size = Math.max(size, pos + len);
}

async function main(mountpoint: string | undefined): Promise<void> {
  if (mountpoint === undefined) throw new Error('usage: barewrite <mountpoint>');
  const ops: Fuse.Operations = {
    init: (cb) => cb(0),
    getattr: (p, cb) => {
      if (p === '/') return cb(0, stat(0o040755, 4096));
      if (p === '/file' && exists) return cb(0, stat(0o100644, size));
      cb(ENOENT);
    },
    readdir: (_p, cb) => cb(0, exists ? ['.', '..', 'file'] : ['.', '..']),
    create: (_p, _mode, cb) => {
      exists = true;
      cb(0, 1);
    },
    open: (p, _flags, cb) => (p === '/file' && exists ? cb(0, 1) : cb(ENOENT)),
    truncate: (_p, n, cb) => {
      resize(n);
      cb(0);
    },
    ftruncate: (_p, _fd, n, cb) => {
      resize(n);
      cb(0);
    },
    write: (_p, _fd, buf, len, pos, cb) => {
      write(buf, len, pos);
      cb(len);
    },
    release: (_p, _fd, cb) => cb(0),
    utimens: (_p, _a, _m, cb) => cb(0),
    chmod: (_p, _m, cb) => cb(0),
  };
  const fuse = new Fuse(mountpoint, ops, { fsname: 'barewrite,big_writes', subtype: 'barewrite', maxRead: 1024 * 1024, timeout: false });
  await new Promise<void>((resolve, reject) => fuse.mount((err) => (err ? reject(err) : resolve())));
  process.stderr.write('barewrite: mounted\n');
  await new Promise<void>((resolve) => {
    process.once('SIGTERM', resolve);
    process.once('SIGINT', resolve);
  });
  await new Promise<void>((resolve) => fuse.unmount(() => resolve()));
}

main(process.argv[2]).catch((e: unknown) => {
  process.stderr.write(`barewrite: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exitCode = 1;
});
