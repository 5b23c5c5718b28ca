/* The part of fuse-native 2.2 that the benchmark's bare-FUSE baseline uses (the package ships no types). */
declare module 'fuse-native' {
  namespace Fuse {
    interface Stat {
      mode: number; uid: number; gid: number; size: number; dev?: number; nlink: number; ino?: number;
      rdev?: number; blksize?: number; blocks: number; atime: Date; mtime: Date; ctime: Date;
    }
    interface Statfs {
      bsize: number; frsize: number; blocks: number; bfree: number; bavail: number; files: number;
      ffree: number; favail: number; fsid: number; flag: number; namemax: number;
    }
    interface Operations {
      init?(cb: (err: number) => void): void;
      statfs?(path: string, cb: (err: number, statfs?: Statfs) => void): void;
      getattr?(path: string, cb: (err: number, stat?: Stat) => void): void;
      fgetattr?(path: string, fd: number, cb: (err: number, stat?: Stat) => void): void;
      readdir?(path: string, cb: (err: number, names?: string[]) => void): void;
      open?(path: string, flags: number, cb: (err: number, fd?: number) => void): void;
      create?(path: string, mode: number, cb: (err: number, fd?: number) => void): void;
      read?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (bytes: number) => void): void;
      write?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (bytes: number) => void): void;
      release?(path: string, fd: number, cb: (err: number) => void): void;
      flush?(path: string, fd: number, cb: (err: number) => void): void;
      fsync?(path: string, datasync: boolean, fd: number, cb: (err: number) => void): void;
      truncate?(path: string, size: number, cb: (err: number) => void): void;
      ftruncate?(path: string, fd: number, size: number, cb: (err: number) => void): void;
      unlink?(path: string, cb: (err: number) => void): void;
      rename?(src: string, dest: string, cb: (err: number) => void): void;
      mkdir?(path: string, mode: number, cb: (err: number) => void): void;
      rmdir?(path: string, cb: (err: number) => void): void;
      chmod?(path: string, mode: number, cb: (err: number) => void): void;
      chown?(path: string, uid: number, gid: number, cb: (err: number) => void): void;
      utimens?(path: string, atime: number, mtime: number, cb: (err: number) => void): void;
      symlink?(src: string, dest: string, cb: (err: number) => void): void;
      link?(src: string, dest: string, cb: (err: number) => void): void;
      mknod?(path: string, mode: number, dev: number, cb: (err: number) => void): void;
    }
    interface Options {
      force?: boolean; mkdir?: boolean; debug?: boolean; fsname?: string; subtype?: string;
      maxRead?: number; timeout?: number | false; allowOther?: boolean; autoCache?: boolean;
      attrTimeout?: number; entryTimeout?: number; defaultPermissions?: boolean; uid?: number; gid?: number;
    }
  }
  class Fuse {
    constructor(mnt: string, ops: Operations, opts?: Options);
    mount(cb: (err: Error | null) => void): void;
    unmount(cb: (err: Error | null) => void): void;
    static unmount(mnt: string, cb: (err: Error | null) => void): void;
    static isConfigured(cb: (err: Error | null, configured: boolean) => void): void;
  }
  export = Fuse;
}
