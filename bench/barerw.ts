/* The bare-FUSE baseline of the peers benchmark: a minimal filesystem of read-write files
 * kept in memory in 1 MiB chunks (absent chunks read as zeros, so a sparse file costs no
 * memory), mounted with blobdisk's FUSE options. It is what a FUSE binding on this machine
 * serves at best, for reads, writes and fio alike: fuse-native (the default, the peers
 * benchmark's "bare fuse-native" column) or blobdisk's own libfuse 3 binding
 * (BAREFS_BINDING=fuse3, lib/fuse/fuse3.ts; bench/fuse3/compare.sh runs both).
 *
 *   node dist/bench/barerw.js <mountpoint> [name=datafile | name=size] ...
 * A preload `name=datafile` holds the file's bytes; `name=1073741824` makes a sparse file.
 * BAREFS_WRITEBACK=1 asks the libfuse 3 binding for the kernel's writeback cache.
 * Prints "barerw: mounted <mountpoint>" on stderr when ready; SIGTERM or SIGINT unmounts. */

import type Fuse from 'fuse-native';
import { readFileSync } from 'node:fs';
import { Fuse3, Operations, Stat } from '../lib/fuse/fuse3';

const ENOENT = -2;
const CHUNK = 1024 * 1024;

interface File {
  size: number;
  readonly chunks: Map<number, Buffer>;
}

const files = new Map<string, File>();

function stat(mode: number, size: number): Stat {
  const now = new Date();
  return { mode, uid: 0, gid: 0, size, nlink: 1, blocks: Math.ceil(size / 512), atime: now, mtime: now, ctime: now };
}

function load(name: string, source: string): void {
  const f: File = { size: 0, chunks: new Map() };
  if (/^\d+$/.test(source)) f.size = Number(source);
  else {
    const data = readFileSync(source);
    for (let at = 0; at < data.length; at += CHUNK) f.chunks.set(at / CHUNK, Buffer.from(data.subarray(at, at + CHUNK)));
    f.size = data.length;
  }
  files.set(`/${name}`, f);
}

function read(f: File, buf: Buffer, len: number, pos: number): number {
  const n = Math.max(0, Math.min(len, f.size - pos));
  for (let done = 0; done < n; ) {
    const idx = Math.floor((pos + done) / CHUNK);
    const at = (pos + done) % CHUNK;
    const k = Math.min(n - done, CHUNK - at);
    const chunk = f.chunks.get(idx);
    if (chunk) chunk.copy(buf, done, at, at + k);
    else buf.fill(0, done, done + k);
    done += k;
  }
  return n;
}

function write(f: File, buf: Buffer, len: number, pos: number): void {
  for (let done = 0; done < len; ) {
    const idx = Math.floor((pos + done) / CHUNK);
    const at = (pos + done) % CHUNK;
    let chunk = f.chunks.get(idx);
    if (!chunk) f.chunks.set(idx, (chunk = Buffer.alloc(CHUNK)));
    const k = Math.min(len - done, CHUNK - at);
    buf.copy(chunk, at, done, done + k);
    done += k;
  }
  f.size = Math.max(f.size, pos + len);
}

function resize(f: File, bytes: number): void {
  for (const idx of f.chunks.keys()) {
    if (idx * CHUNK >= bytes) f.chunks.delete(idx);
    else if ((idx + 1) * CHUNK > bytes) f.chunks.get(idx)?.fill(0, bytes - idx * CHUNK);
  }
  f.size = bytes;
}

async function main(argv: string[]): Promise<void> {
  const [mountpoint, ...preloads] = argv;
  if (mountpoint === undefined) throw new Error('usage: barerw <mountpoint> [name=datafile|name=size] ...');
  for (const p of preloads) {
    const eq = p.indexOf('=');
    load(p.slice(0, eq), p.slice(eq + 1));
  }
  const ops: Operations = {
    init: (cb) => cb(0),
    getattr: (p, cb) => {
      if (p === '/') return cb(0, stat(0o040755, 4096));
      const f = files.get(p);
      return f ? cb(0, stat(0o100644, f.size)) : cb(ENOENT);
    },
    fgetattr: (p, _fd, cb) => {
      const f = files.get(p);
      return f ? cb(0, stat(0o100644, f.size)) : cb(ENOENT);
    },
    readdir: (_p, cb) => cb(0, ['.', '..', ...[...files.keys()].map((k) => k.slice(1))]),
    create: (p, _mode, cb) => {
      if (!files.has(p)) files.set(p, { size: 0, chunks: new Map() });
      cb(0, 1);
    },
    open: (p, _flags, cb) => (files.has(p) ? cb(0, 1) : cb(ENOENT)),
    read: (p, _fd, buf, len, pos, cb) => {
      const f = files.get(p);
      cb(f ? read(f, buf, len, pos) : ENOENT);
    },
    write: (p, _fd, buf, len, pos, cb) => {
      const f = files.get(p);
      if (!f) return cb(ENOENT);
      write(f, buf, len, pos);
      cb(len);
    },
    truncate: (p, n, cb) => {
      const f = files.get(p);
      if (f) resize(f, n);
      cb(f ? 0 : ENOENT);
    },
    ftruncate: (p, _fd, n, cb) => {
      const f = files.get(p);
      if (f) resize(f, n);
      cb(f ? 0 : ENOENT);
    },
    unlink: (p, cb) => cb(files.delete(p) ? 0 : ENOENT),
    fsync: (_p, _d, _fd, cb) => cb(0),
    flush: (_p, _fd, cb) => cb(0),
    release: (_p, _fd, cb) => cb(0),
    utimens: (_p, _a, _m, cb) => cb(0),
    chmod: (_p, _m, cb) => cb(0),
    fallocate: (p, mode, offset, length, _fd, cb) => {
      const f = files.get(p);
      if (!f) return cb(ENOENT);
      if (mode !== 3 /* PUNCH_HOLE|KEEP_SIZE */) return cb(-95);
      const end = Math.min(f.size, offset + length);
      if (end > offset) write(f, Buffer.alloc(end - offset), end - offset, offset);
      cb(0);
    },
  };
  const unmount = process.env['BAREFS_BINDING'] === 'fuse3' ? await mountFuse3(mountpoint, ops) : await mountFuseNative(mountpoint, ops);
  process.stderr.write(`barerw: mounted ${mountpoint}\n`);
  await new Promise<void>((resolve) => {
    process.once('SIGTERM', resolve);
    process.once('SIGINT', resolve);
  });
  await unmount();
}

/** blobdisk's FUSE options on its libfuse 3 binding: 1 MiB requests are its default. */
async function mountFuse3(mountpoint: string, ops: Operations): Promise<() => Promise<void>> {
  const writeback = process.env['BAREFS_WRITEBACK'] === '1';
  const fuse = await Fuse3.mount(mountpoint, ops, { options: ['fsname=barerw', 'subtype=barerw'], writeback });
  process.stderr.write(`barerw: libfuse 3, requests up to ${fuse.connection.maxWrite} bytes, writeback cache ${fuse.connection.writeback ? 'on' : 'off'}\n`);
  return async () => void (await fuse.unmount());
}

/** blobdisk's former FUSE options on fuse-native: big_writes through fsname, 1 MiB max_read,
 *  no timeout (fuse-native is a devDependency kept for this baseline). */
async function mountFuseNative(mountpoint: string, ops: Operations): Promise<() => Promise<void>> {
  const FuseNative = (await import('fuse-native')).default;
  const fuse = new FuseNative(mountpoint, ops as Fuse.Operations, { fsname: 'barerw,big_writes', subtype: 'barerw', maxRead: 1024 * 1024, timeout: false });
  await new Promise<void>((resolve, reject) => fuse.mount((err) => (err ? reject(err) : resolve())));
  return () => new Promise<void>((resolve) => fuse.unmount(() => resolve()));
}

main(process.argv.slice(2)).catch((e: unknown) => {
  process.stderr.write(`barerw: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exitCode = 1;
});
