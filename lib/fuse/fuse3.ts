/* The JavaScript half of blobdisk's libfuse 3 binding (native/fuse3.c, built by node-gyp
 * into build/Release/fuse3.node during npm install). libfuse's threads hand each request to
 * one dispatcher here; it calls the operation with fuse-native's callback shapes (plus
 * fallocate) and answers exactly once, even when an operation throws or calls back twice. */

import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { FastTable } from '../cache/native';

export interface Stat {
  mode: number; uid: number; gid: number; size: number; nlink: number;
  blksize?: number; blocks: number; atime: Date | number; mtime: Date | number; ctime: Date | number;
}
export interface Statfs {
  bsize: number; frsize: number; blocks: number; bfree: number; bavail: number; files: number;
  ffree: number; favail: number; fsid: number; flag: number; namemax: number;
}
type Done = (result: number) => void;
/** The operations a filesystem serves; an absent one answers ENOSYS. Results are 0 or a
 *  negative errno; read and write answer the byte count. */
export interface Operations {
  init?(cb: Done): void;
  statfs?(path: string, cb: (result: number, statfs?: Statfs) => void): void;
  getattr?(path: string, cb: (result: number, stat?: Stat) => void): void;
  fgetattr?(path: string, fd: number, cb: (result: number, stat?: Stat) => void): void;
  readdir?(path: string, cb: (result: number, names?: string[]) => void): void;
  open?(path: string, flags: number, cb: (result: number, fd?: number) => void): void;
  create?(path: string, mode: number, cb: (result: number, fd?: number) => void): void;
  read?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: Done): void;
  write?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: Done): void;
  release?(path: string, fd: number, cb: Done): void;
  flush?(path: string, fd: number, cb: Done): void;
  fsync?(path: string, datasync: boolean, fd: number, cb: Done): void;
  truncate?(path: string, size: number, cb: Done): void;
  ftruncate?(path: string, fd: number, size: number, cb: Done): void;
  unlink?(path: string, cb: Done): void;
  rename?(src: string, dest: string, cb: Done): void;
  mkdir?(path: string, mode: number, cb: Done): void;
  rmdir?(path: string, cb: Done): void;
  chmod?(path: string, mode: number, cb: Done): void;
  chown?(path: string, uid: number, gid: number, cb: Done): void;
  utimens?(path: string, atime: number, mtime: number, cb: Done): void;
  /** fallocate(2) on an open file: `mode` holds the FALLOC_FL_* bits. */
  fallocate?(path: string, mode: number, offset: number, length: number, fd: number, cb: Done): void;
  /** Not a FUSE operation: the fast path served requests (see lib/cache/native.ts). */
  kick?(): void;
}

export interface MountOptions {
  /** Joined into libfuse's -o string (fsname, subtype, allow_other...). */
  readonly options: readonly string[];
  /** Ask the kernel for its writeback cache (FUSE_CAP_WRITEBACK_CACHE). */
  readonly writeback: boolean;
  /** Largest read and write request (max_read, max_write; libfuse 3.14 allows 1 MiB). */
  readonly maxRequest?: number;
  /** The fast path's table (fastTable()); absent: every request goes to JavaScript. */
  readonly fast?: NativeFastTable;
}

/** A fast path table of the binding, for GrainCache and Fuse3.mount. */
export interface NativeFastTable extends FastTable {
  readonly handle: object;
}

/** What the kernel agreed to at INIT. */
export interface Connection {
  readonly maxWrite: number;
  readonly writeback: boolean;
}

export const MAX_REQUEST = 1024 * 1024;

interface Native {
  mount(mountpoint: string, options: string, writeback: boolean, maxRequest: number, dispatch: (...args: never[]) => void, fast?: object): object;
  unmount(session: object): void;
  join(session: object): number;
  unref(session: object): void;
  reply(request: object, result: number, value?: unknown): void;
  fastCreate(grainSize: number, journalFile: string): object;
  fastPublish(table: object, imageId: number, idx: number, fd: number, flags: number, valid: Buffer | null): void;
  fastRevoke(table: object, imageId: number, idx: number): void;
  fastBind(table: object, fh: number, imageId: number): void;
  fastDrain(table: object): Float64Array | undefined;
  fastAck(table: object, position: number): void;
  fastServed(table: object): [number, number];
}

// The opcodes of native/fuse3.c, in its order.
const OPS = [
  'init', 'getattr', 'fgetattr', 'readdir', 'open', 'create', 'read', 'write', 'flush', 'fsync',
  'release', 'truncate', 'ftruncate', 'unlink', 'mkdir', 'rmdir', 'rename', 'chmod', 'chown',
  'utimens', 'statfs', 'fallocate',
] as const;
const LOOP_ENDED = OPS.length;
const KICK = OPS.length + 1;
const EIO = -5;
const ENOSYS = -38;

let native: Native | undefined;

/** Loads build/Release/fuse3.node from the package root (above lib/ or dist/lib/). */
function load(): Native {
  if (native) return native;
  for (let dir = __dirname; ; dir = dirname(dir)) {
    const file = join(dir, 'build', 'Release', 'fuse3.node');
    if (existsSync(file)) return (native = require(file) as Native);
    if (dirname(dir) === dir) break;
  }
  throw new Error('the FUSE binding is not built: run `npm install` (it needs libfuse3-dev and a C compiler)');
}

/** A fast path table for a mount with grains of `grainSize` bytes, journaling into
 *  `journalFile` (in the cache directory): the FUSE binding then serves reads and writes of
 *  published grains on libfuse's threads (lib/cache/native.ts). */
export function fastTable(grainSize: number, journalFile: string): NativeFastTable {
  const binding = load();
  const handle = binding.fastCreate(grainSize, journalFile);
  return {
    handle,
    publish: (imageId, idx, fd, flags, valid) => binding.fastPublish(handle, imageId, idx, fd, flags, valid),
    revoke: (imageId, idx) => binding.fastRevoke(handle, imageId, idx),
    bind: (fh, imageId) => binding.fastBind(handle, fh, imageId),
    drain: () => binding.fastDrain(handle),
    ack: (position) => binding.fastAck(handle, position),
    served: () => {
      const [reads, writes] = binding.fastServed(handle);
      return { reads, writes };
    },
  };
}

const ms = (t: Date | number): number => (typeof t === 'number' ? t : t.getTime());
const statArray = (s: Stat): number[] =>
  [s.mode, s.uid, s.gid, s.size, s.nlink, s.blksize ?? 4096, s.blocks, ms(s.atime), ms(s.mtime), ms(s.ctime)];
const statfsArray = (s: Statfs): number[] =>
  [s.bsize, s.frsize, s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.favail, s.fsid, s.flag, s.namemax];

/** Calls operation `op` of `ops` with the request's arguments; `answer` must be called once. */
function call(ops: Operations, op: number, path: string, a: unknown[], answer: (result: number, value?: unknown) => void): void {
  const n = (i: number): number => a[i] as number;
  const done: Done = (r) => answer(r);
  switch (OPS[op]) {
    case 'getattr':
      return ops.getattr ? ops.getattr(path, (r, s) => answer(r, s && statArray(s))) : answer(ENOSYS);
    case 'fgetattr': {
      const cb = (r: number, s?: Stat): void => answer(r, s && statArray(s));
      if (ops.fgetattr) return ops.fgetattr(path, n(0), cb);
      return ops.getattr ? ops.getattr(path, cb) : answer(ENOSYS);
    }
    case 'statfs':
      return ops.statfs ? ops.statfs(path, (r, s) => answer(r, s && statfsArray(s))) : answer(ENOSYS);
    case 'readdir':
      return ops.readdir ? ops.readdir(path, (r, names) => answer(r, names)) : answer(ENOSYS);
    case 'open':
      return ops.open ? ops.open(path, n(0), (r, fd) => answer(r, fd ?? 0)) : answer(0, 0);
    case 'create':
      return ops.create ? ops.create(path, n(0), (r, fd) => answer(r, fd ?? 0)) : answer(ENOSYS);
    case 'read': case 'write': {
      const buf = a[1] as Buffer;
      const fn = OPS[op] === 'read' ? ops.read : ops.write;
      return fn ? fn(path, n(0), buf, n(2), n(3), (r) => answer(r, buf)) : answer(ENOSYS, buf);
    }
    case 'flush': return ops.flush ? ops.flush(path, n(0), done) : answer(0);
    case 'release': return ops.release ? ops.release(path, n(0), done) : answer(0);
    case 'fsync': return ops.fsync ? ops.fsync(path, n(0) !== 0, n(1), done) : answer(0);
    case 'truncate': return ops.truncate ? ops.truncate(path, n(0), done) : answer(ENOSYS);
    case 'ftruncate':
      if (ops.ftruncate) return ops.ftruncate(path, n(0), n(1), done);
      return ops.truncate ? ops.truncate(path, n(1), done) : answer(ENOSYS);
    case 'unlink': return ops.unlink ? ops.unlink(path, done) : answer(ENOSYS);
    case 'mkdir': return ops.mkdir ? ops.mkdir(path, n(0), done) : answer(ENOSYS);
    case 'rmdir': return ops.rmdir ? ops.rmdir(path, done) : answer(ENOSYS);
    case 'rename': return ops.rename ? ops.rename(path, a[0] as string, done) : answer(ENOSYS);
    case 'chmod': return ops.chmod ? ops.chmod(path, n(0), done) : answer(ENOSYS);
    case 'chown': return ops.chown ? ops.chown(path, n(0), n(1), done) : answer(ENOSYS);
    case 'utimens': return ops.utimens ? ops.utimens(path, n(0), n(1), done) : answer(ENOSYS);
    case 'fallocate':
      return ops.fallocate ? ops.fallocate(path, n(0), n(1), n(2), n(3), done) : answer(-95 /* EOPNOTSUPP */);
    default: return answer(ENOSYS);
  }
}

export class Fuse3 {
  private constructor(
    readonly mountpoint: string,
    readonly connection: Connection,
    private readonly binding: Native,
    private readonly session: object,
    private readonly ended: Promise<number>,
  ) {
    void ended.then(() => (this.loopEnded = true));
  }

  /** Set once libfuse's loop has ended and its state is freed (also after an outside umount). */
  private loopEnded = false;

  /** Mounts `ops` at `mountpoint`; resolves once the kernel has completed INIT, so requests
   *  are served. Rejects with the reason when the binding is missing or the kernel refuses. */
  static async mount(mountpoint: string, ops: Operations, options: MountOptions): Promise<Fuse3> {
    const binding = load();
    let finish: (code: number) => void = () => {};
    const ended = new Promise<number>((resolve) => (finish = resolve));
    let ready: (c: Connection) => void = () => {};
    const initialized = new Promise<Connection>((resolve) => (ready = resolve));
    let session: object | undefined;
    const dispatch = (op: number, request: object, path: string, ...args: unknown[]): void => {
      if (op === KICK) {
        ops.kick?.();
        return;
      }
      if (op === LOOP_ENDED) {
        // The loop thread has returned: collect it on the next turn (session is set by then).
        setImmediate(() => finish(session ? binding.join(session) : 0));
        return;
      }
      if (OPS[op] === 'init') {
        binding.reply(request, 0);
        ready({ maxWrite: args[0] as number, writeback: args[1] === 1 });
        return;
      }
      let answered = false;
      const answer = (result: number, value?: unknown): void => {
        if (answered) return;
        answered = true;
        binding.reply(request, typeof result === 'number' && Number.isInteger(result) ? result : EIO, value);
      };
      try {
        call(ops, op, path, args, answer);
      } catch {
        answer(EIO, OPS[op] === 'read' || OPS[op] === 'write' ? args[1] : undefined);
      }
    };
    session = binding.mount(mountpoint, options.options.join(','), options.writeback, options.maxRequest ?? MAX_REQUEST, dispatch as (...args: never[]) => void, options.fast?.handle);
    const first = await Promise.race([initialized, ended.then(() => undefined)]);
    if (!first) throw new Error('the kernel ended the FUSE session before it started (see libfuse\'s message above)');
    return new Fuse3(mountpoint, first, binding, session, ended);
  }

  /** Detaches the mount and ends the session loop; resolves once libfuse's threads are
   *  gone. Requests already handed to JavaScript are still answered. When the loop has not
   *  ended after `waitMs` (someone still holds a file of the detached mount open), resolves
   *  false and lets the process exit without it. */
  async unmount(waitMs = 5000): Promise<boolean> {
    if (this.loopEnded) return true;
    this.binding.unmount(this.session);
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), waitMs)));
    const ended = await Promise.race([this.ended.then(() => true), timedOut]);
    clearTimeout(timer);
    if (!ended) this.binding.unref(this.session);
    return ended;
  }

  /** Resolves when the session loop ends, also when someone else unmounted. */
  get closed(): Promise<number> {
    return this.ended;
  }
}
