/* fuse-native callbacks → namespace and image calls. Every callback runs on the Node
 * event loop, so nothing here may block: all work is async and answered through `cb`.
 * Errors become errnos only through toErrno(). Writes are refused with EROFS for now:
 * the mount serves the read path. */

import type Fuse from 'fuse-native';
import { BlobdiskError } from '../errors';
import { Logger } from '../log';
import { Attributes, Namespace } from '../namespace/namespace';
import { toErrno } from './errno';
import { Handles } from './handles';

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const O_ACCMODE = 3;
const O_RDONLY = 0;

export interface OpsOptions {
  readonly uid: number;
  readonly gid: number;
  readonly grainSize: number;
}

function toStat(a: Attributes, o: OpsOptions): Fuse.Stat {
  const perm = a.type === 'dir' ? (a.writable ? 0o755 : 0o555) : a.writable ? 0o644 : 0o444;
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
function statfs(): Fuse.Statfs {
  const blocks = 2 ** 32 - 1; // fuse-native passes 32-bit fields: 16 TiB of 4 KiB blocks
  return { bsize: 4096, frsize: 4096, blocks, bfree: blocks, bavail: blocks, files: 1e9, ffree: 1e9, favail: 1e9, fsid: 0, flag: 0, namemax: 255 };
}

export function createOperations(ns: Namespace, handles: Handles, options: OpsOptions, log: Logger): Fuse.Operations {
  const fail = (op: string, path: string, e: unknown): number => toErrno(op, path, e, log);
  const readOnly = (op: string, path: string, cb: (err: number) => void): void =>
    cb(fail(op, path, new BlobdiskError('EROFS', 'this mount does not write')));

  return {
    init: (cb) => cb(0),
    statfs: (_path, cb) => cb(0, statfs()),
    getattr: (path, cb) => {
      ns.getattr(path).then(
        (a) => cb(0, toStat(a, options)),
        (e) => cb(fail('getattr', path, e)),
      );
    },
    readdir: (path, cb) => {
      ns.readdir(path).then(
        (names) => cb(0, ['.', '..', ...names]),
        (e) => cb(fail('readdir', path, e)),
      );
    },
    open: (path, flags, cb) => {
      if ((flags & O_ACCMODE) !== O_RDONLY) return readOnly('open', path, cb);
      ns.open(path).then(
        (image) => cb(0, handles.add({ image, path, flags })),
        (e) => cb(fail('open', path, e)),
      );
    },
    read: (path, fd, buf, len, pos, cb) => {
      let handle;
      try {
        handle = handles.get(fd);
      } catch (e) {
        return cb(fail('read', path, e));
      }
      handle.image.readInto(buf, pos, len).then(
        (n) => cb(n),
        (e) => cb(fail('read', path, e)),
      );
    },
    release: (_path, fd, cb) => {
      handles.release(fd);
      cb(0);
    },
    create: (path, _mode, cb) => readOnly('create', path, cb),
    write: (path, _fd, _buf, _len, _pos, cb) => readOnly('write', path, cb),
    truncate: (path, _size, cb) => readOnly('truncate', path, cb),
    ftruncate: (path, _fd, _size, cb) => readOnly('ftruncate', path, cb),
    unlink: (path, cb) => readOnly('unlink', path, cb),
    rename: (path, _dest, cb) => readOnly('rename', path, cb),
    mkdir: (path, _mode, cb) => readOnly('mkdir', path, cb),
    rmdir: (path, cb) => readOnly('rmdir', path, cb),
    chmod: (path, _mode, cb) => readOnly('chmod', path, cb),
    chown: (path, _uid, _gid, cb) => readOnly('chown', path, cb),
    utimens: (path, _atime, _mtime, cb) => readOnly('utimens', path, cb),
  };
}
