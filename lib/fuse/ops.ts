/* FUSE callbacks (lib/fuse/fuse3.ts) → namespace and image calls. Every callback runs on
 * the Node event loop, so nothing here may block: all work is async and answered through
 * `cb`. Errors become errnos only through toErrno(). */

import { BlobdiskError } from '../errors';
import { Logger } from '../log';
import { Attributes, Namespace } from '../namespace/namespace';
import { toErrno } from './errno';
import type { Operations, Stat, Statfs } from './fuse3';
import { Handles } from './handles';

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const O_ACCMODE = 3;
const O_RDONLY = 0;
const O_TRUNC = 0o1000;
// fallocate(2) modes
const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;
const FALLOC_FL_ZERO_RANGE = 0x10;

const WRITE_BITS = 0o222;
/** How long after a kick the natively served requests are taken in. */
const KICK_DELAY_MS = 2;

export interface OpsOptions {
  readonly uid: number;
  readonly gid: number;
  readonly fileMode: number;
  readonly dirMode: number;
  readonly grainSize: number;
}

function toStat(a: Attributes, o: OpsOptions): Stat {
  const mode = a.type === 'dir' ? o.dirMode : o.fileMode;
  const perm = a.writable ? mode : mode & ~WRITE_BITS;
  return {
    mode: (a.type === 'dir' ? S_IFDIR : S_IFREG) | perm,
    uid: o.uid,
    gid: o.gid,
    size: a.size,
    nlink: a.type === 'dir' ? 2 : 1,
    blksize: o.grainSize,
    blocks: a.blocks,
    atime: a.mtime,
    mtime: a.mtime,
    ctime: a.mtime,
  };
}

/** A statfs answer: Azure has no fixed capacity, so report a large, mostly free volume. */
function statfs(): Statfs {
  const blocks = 2 ** 32 - 1; // 16 TiB of 4 KiB blocks
  return { bsize: 4096, frsize: 4096, blocks, bfree: blocks, bavail: blocks, files: 1e9, ffree: 1e9, favail: 1e9, fsid: 0, flag: 0, namemax: 255 };
}

/** fallocate on an open image. Punching a hole (guest discard) or zeroing a range makes it
 *  read as zeros (page blobs clear those pages at upload); allocating (mode 0) within the
 *  size does nothing, past it grows the image, as Azure allocates on write anyway. */
async function fallocate(handles: Handles, fd: number, mode: number, offset: number, length: number): Promise<void> {
  const image = handles.get(fd).image;
  const keepSize = (mode & FALLOC_FL_KEEP_SIZE) !== 0;
  const kind = mode & ~FALLOC_FL_KEEP_SIZE;
  if (kind === FALLOC_FL_PUNCH_HOLE || kind === FALLOC_FL_ZERO_RANGE) await image.zero(offset, length);
  else if (kind !== 0) throw new BlobdiskError('not-supported', `fallocate mode 0x${mode.toString(16)} is not supported`);
  if (!keepSize && kind !== FALLOC_FL_PUNCH_HOLE && offset + length > image.size) await image.truncate(offset + length);
}

/** The fast path's side the operations use (lib/cache/native.ts). */
export interface NativeSide {
  bind(fh: number, imageId: number): void;
  settle(): void;
}

export function createOperations(ns: Namespace, handles: Handles, options: OpsOptions, log: Logger, native?: NativeSide): Operations {
  // Every request JavaScript serves first takes in what the FUSE binding served natively,
  // so it sees every write acknowledged before it (cheap: one call when nothing is new).
  const settle = native ? () => native.settle() : () => undefined;
  // A kick (the binding served writes) is answered a moment later, so that one turn of the
  // event loop takes in the writes of a few milliseconds: what waits on them (fsync, an
  // upload's clean mark, eviction) settles for itself first.
  let kicked: NodeJS.Timeout | undefined;
  const kick = (): void => {
    kicked ??= setTimeout(() => {
      kicked = undefined;
      settle();
    }, KICK_DELAY_MS).unref();
  };
  const opened = (fd: number, imageId: number): number => {
    native?.bind(fd, imageId);
    return fd;
  };
  /** Answers `cb` with 0 (or what `ok` makes of the result) or the errno of the failure. */
  const reply = <T>(op: string, path: string, work: Promise<T>, cb: (result: number, value?: never) => void, ok: (v: T) => number = () => 0): void => {
    work.then(
      (v) => cb(ok(v)),
      (e: unknown) => cb(toErrno(op, path, e, log)),
    );
  };
  const handle = (fd: number) => handles.get(fd);
  /** Answers `cb` with what `now` returns, or its errno; false when `now` returned undefined
   *  (the request needs the asynchronous path). */
  const answeredNow = (op: string, path: string, cb: (result: number) => void, now: () => number | undefined): boolean => {
    let n: number | undefined;
    try {
      n = now();
    } catch (e) {
      cb(toErrno(op, path, e, log));
      return true;
    }
    if (n === undefined) return false;
    cb(n);
    return true;
  };

  return {
    init: (cb) => cb(0),
    statfs: (_path, cb) => cb(0, statfs()),
    getattr: (path, cb) => {
      ns.getattr(path).then(
        (a) => cb(0, toStat(a, options)),
        (e: unknown) => cb(toErrno('getattr', path, e, log)),
      );
    },
    fgetattr: (path, _fd, cb) => {
      ns.getattr(path).then(
        (a) => cb(0, toStat(a, options)),
        (e: unknown) => cb(toErrno('fgetattr', path, e, log)),
      );
    },
    readdir: (path, cb) => {
      ns.readdir(path).then(
        (names) => cb(0, ['.', '..', ...names]),
        (e: unknown) => cb(toErrno('readdir', path, e, log)),
      );
    },
    open: (path, flags, cb) => {
      const writing = (flags & O_ACCMODE) !== O_RDONLY;
      const opening = (async () => {
        const image = writing ? await ns.openForWrite(path) : await ns.open(path);
        if (writing && flags & O_TRUNC) await image.truncate(0);
        return opened(handles.add({ image, path, flags }), image.id);
      })();
      opening.then(
        (fd) => cb(0, fd),
        (e: unknown) => cb(toErrno('open', path, e, log)),
      );
    },
    create: (path, _mode, cb) => {
      ns.create(path).then(
        (image) => cb(0, opened(handles.add({ image, path, flags: 2 }), image.id)),
        (e: unknown) => cb(toErrno('create', path, e, log)),
      );
    },
    // Reads of staged grains and writes into open grain files are answered at once: each
    // FUSE request waits for its answer, so turns through promises add to every round trip.
    read: (path, fd, buf, len, pos, cb) => {
      settle();
      if (!answeredNow('read', path, cb, () => handles.find(fd)?.image.readNow(buf, pos, len))) {
        reply('read', path, (async () => handle(fd).image.readInto(buf, pos, len))(), cb, (n) => n);
      }
    },
    write: (path, fd, buf, len, pos, cb) => {
      settle();
      const data = buf.subarray(0, len);
      if (!answeredNow('write', path, cb, () => handles.find(fd)?.image.writeNow(data, pos))) {
        reply('write', path, (async () => handle(fd).image.write(data, pos))(), cb, (n) => n);
      }
    },
    flush: (_path, _fd, cb) => cb(0),
    kick,
    fsync: (path, _datasync, fd, cb) => reply('fsync', path, (async () => handle(fd).image.fsync())(), cb),
    release: (_path, fd, cb) => {
      native?.bind(fd, 0);
      handles.release(fd);
      cb(0);
    },
    truncate: (path, size, cb) => reply('truncate', path, ns.truncate(path, size), cb),
    ftruncate: (path, fd, size, cb) => reply('ftruncate', path, (async () => handle(fd).image.truncate(size))(), cb),
    unlink: (path, cb) => reply('unlink', path, ns.unlink(path), cb),
    mkdir: (path, _mode, cb) => reply('mkdir', path, ns.mkdir(path), cb),
    rmdir: (path, cb) => reply('rmdir', path, ns.rmdir(path), cb),
    rename: (path, dest, cb) => reply('rename', path, ns.rename(path, dest), cb),
    // Mode, owner and times are not kept in Azure: accepted and left as they are (see README).
    chmod: (path, _mode, cb) => reply('chmod', path, ns.setAttributes(path), cb),
    chown: (path, _uid, _gid, cb) => reply('chown', path, ns.setAttributes(path), cb),
    utimens: (path, _atime, _mtime, cb) => reply('utimens', path, ns.setAttributes(path), cb),
    fallocate: (path, mode, offset, length, fd, cb) => reply('fallocate', path, fallocate(handles, fd, mode, offset, length), cb),
  };
}
