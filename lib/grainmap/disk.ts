/* The cache directory's disk, as the grain map's change log and the grain cache (which
 * sits above and shares it) use it: every write, sync, rename and removal in the cache
 * directory goes through one Disk, so a test can record
 * them and build the state a power loss could leave (test/support/crash-disk.ts), or
 * inject local disk errors (ENOSPC, a short write, a failed fdatasync). NODE_DISK is the
 * real one. Reads of whole files (the checksum worker) go to the files directly. */

import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import type { Logger } from '../log';

/** An open grain file (fs.promises' FileHandle is one). */
export interface GrainHandle {
  readonly fd: number;
  read(buffer: Buffer, offset: number, length: number, position: number): Promise<{ bytesRead: number }>;
  write(buffer: Buffer, offset: number, length: number, position: number): Promise<{ bytesWritten: number }>;
  datasync(): Promise<void>;
  truncate(length: number): Promise<void>;
  close(): Promise<void>;
}

export interface Disk {
  /** Opens `file` read-write, creating it (mode 0600) when absent. */
  open(file: string): Promise<GrainHandle>;
  /** Opens `file` read-write at once; with `create`, creating it (0600) when absent. */
  openSync(file: string, create: boolean): number;
  closeSync(fd: number): void;
  /** One pwrite: returns the bytes written (maybe fewer than asked) or throws (ENOSPC...). */
  writeSync(fd: number, buffer: Buffer, offset: number, length: number, position: number): number;
  readSync(fd: number, buffer: Buffer, offset: number, length: number, position: number): number;
  ftruncateSync(fd: number, length: number): void;
  sizeSync(fd: number): number;
  /** Creates or replaces `file` with `data` (mode 0600). */
  writeFile(file: string, data: Buffer): Promise<void>;
  rename(from: string, to: string): Promise<void>;
  /** Removes a file, or a directory with all it holds; absent is fine. */
  rm(target: string): Promise<void>;
  rmSync(target: string): void;
  /** Creates the directory and its missing parents (mode 0700). */
  mkdir(dir: string): Promise<void>;
  mkdirSync(dir: string): void;
  readdirSync(dir: string): string[];
  exists(file: string): boolean;
  /** fsync of a directory: its entries (new, renamed, removed files) survive a power loss. */
  syncDir(dir: string): Promise<void>;
  /** Identifies this boot of the machine: when it differs from the one recorded by the
   *  last writer, the page cache may have been lost (a power loss, a reset). */
  bootId(): string;
  /** SQLite made the database at `file` durable (a FULL commit). Nothing to do on a real
   *  disk; a crash model takes its copy of the database here. */
  committed(file: string): void;
}

/** What GrainMap.open may be given besides the file: the disk (a test's crash model) and
 *  where to report a change log that cannot be folded. */
export interface MapIo {
  readonly disk?: Disk;
  readonly log?: Logger;
}

function bootId(): string {
  try {
    return fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    // No /proc: the boot time to the minute; a wrong "rebooted" only costs unsynced data.
    return `boot-${Math.round((Date.now() / 1000 - os.uptime()) / 60)}`;
  }
}

export const NODE_DISK: Disk = {
  open: (file) => fsp.open(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600),
  openSync: (file, create) => fs.openSync(file, fs.constants.O_RDWR | (create ? fs.constants.O_CREAT : 0), 0o600),
  closeSync: (fd) => fs.closeSync(fd),
  writeSync: (fd, buffer, offset, length, position) => fs.writeSync(fd, buffer, offset, length, position),
  readSync: (fd, buffer, offset, length, position) => fs.readSync(fd, buffer, offset, length, position),
  ftruncateSync: (fd, length) => fs.ftruncateSync(fd, length),
  sizeSync: (fd) => fs.fstatSync(fd).size,
  writeFile: (file, data) => fsp.writeFile(file, data, { mode: 0o600 }),
  rename: (from, to) => fsp.rename(from, to),
  rm: (target) => fsp.rm(target, { recursive: true, force: true }),
  rmSync: (target) => fs.rmSync(target, { recursive: true, force: true }),
  mkdir: async (dir) => void (await fsp.mkdir(dir, { recursive: true, mode: 0o700 })),
  mkdirSync: (dir) => void fs.mkdirSync(dir, { recursive: true, mode: 0o700 }),
  readdirSync: (dir) => fs.readdirSync(dir),
  exists: (file) => fs.existsSync(file),
  syncDir: async (dir) => {
    const handle = await fsp.open(dir, fs.constants.O_RDONLY);
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  },
  bootId,
  committed: () => undefined,
};
