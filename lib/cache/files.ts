/* The grain files of the cache directory: grains/<image id>/<grain index>, each up to
 * grain-size bytes (holes and a missing tail read as zeros). Open files are kept, at most
 * maxOpenFiles, most recently used last; a file closes once it left them and nobody
 * uses it. Removal of a dropped grain's file is ordered before any new open of it. Every
 * write goes through the Disk (lib/grainmap/disk.ts); directories that may have gained an
 * entry are remembered until syncDirs() fsyncs them. */

import path from 'node:path';
import { Disk, GrainHandle } from '../grainmap/disk';
import { Entry } from './grain-index';

/** An open grain file. It closes once it has left the open files and nobody uses it: a
 *  descriptor closed under a user could be reused by another file and take its bytes, and
 *  one kept open for long after would pile up under a random writer (thousands of opens a
 *  second). */
interface OpenFile {
  readonly handle: Promise<GrainHandle>;
  users: number;
  closing: boolean;
}


/** A grain file opened synchronously for readNow() and writeNow(), for as long as `entry` is the grain's: a
 *  grain made anew (dropped, then fetched or written again) has a new Entry, and its file
 *  may be a new one. Used and closed only synchronously, so no reader can see its
 *  descriptor reused by another file. */
interface ReadFile {
  readonly fd: number;
  readonly entry: Entry;
}

export class GrainFiles {
  private readonly files = new Map<string, OpenFile>();
  /** Descriptors of the files in `files` whose open has finished, for writeNow() and
   *  readNow(). A descriptor leaves with its file's entry there, before it is closed: its
   *  number may then belong to another file. */
  private readonly fds = new Map<string, number>();
  /** Files opened for readNow() and writeNow(), oldest first. */
  private readonly readFiles = new Map<string, ReadFile>();
  /** Files of dropped grains whose removal is under way. */
  private readonly removing = new Map<string, Promise<void>>();
  private readonly dirs = new Set<string>();
  /** Closes under way in the thread pool. */
  private readonly closing = new Set<Promise<void>>();
  /** Directories that may hold entries (new files, renamed ones, new directories) not yet fsynced. */
  private readonly unsyncedDirs = new Set<string>();

  constructor(
    /** The cache directory. */
    private readonly dir: string,
    private readonly grainSize: number,
    /** Open grain files kept, at most. */
    private readonly maxOpenFiles: number,
    /** Files prefetch() opens for readNow(), at most: a few read-ahead windows. */
    private readonly maxReadFiles: number,
    readonly disk: Disk,
  ) {
    disk.mkdirSync(path.join(dir, 'grains'));
    this.unsyncedDirs.add(dir).add(path.join(dir, 'grains'));
  }

  fileOf(imageId: number, idx: number): string {
    return path.join(this.dir, 'grains', String(imageId), String(idx));
  }

  /** The directory of an image's grain files. */
  dirOf(imageId: number): string {
    return path.join(this.dir, 'grains', String(imageId));
  }

  /** Whether the grain's file is open (or opening). */
  isOpen(key: string): boolean {
    return this.files.has(key);
  }

  /** The descriptor of the grain's open file, once its open has finished. */
  fd(key: string): number | undefined {
    return this.fds.get(key);
  }

  /** The descriptor prefetch() opened for reading the grain while `entry` is its. */
  readFd(key: string, entry: Entry): number | undefined {
    const own = this.readFiles.get(key);
    return own?.entry === entry ? own.fd : undefined;
  }

  /** Opens the grain's file for readNow() and writeNow(), while `entry` is the grain's; false
   *  when it cannot be opened. */
  openForRead(key: string, entry: Entry): boolean {
    const known = this.readFiles.get(key);
    if (known?.entry === entry) {
      // Used again: the last to close (a hot grain stays open, and served natively).
      this.readFiles.delete(key);
      this.readFiles.set(key, known);
      return true;
    }
    this.closeRead(key);
    let fd: number;
    try {
      // Synchronous: an open takes microseconds (once the file's directory entry and inode
      // are in memory), less than a turn through the thread pool. Read-write, so that a
      // random writer of cached grains lands at once too (writeNow).
      fd = this.disk.openSync(this.fileOf(entry.imageId, entry.idx), false);
    } catch {
      return false;
    }
    this.keepRead(key, { fd, entry });
    return true;
  }

  /** Creates the file of a grain not cached until now (its directory too), for synchronous
   *  use while `entry` is the grain's; undefined when it cannot be done at once (the file is
   *  open, or a removal of its old file is under way) or failed. */
  createSync(key: string, entry: Entry): number | undefined {
    if (this.files.has(key) || this.removing.has(key) || this.readFiles.has(key)) return undefined;
    const file = this.fileOf(entry.imageId, entry.idx);
    const dir = path.dirname(file);
    let fd: number;
    try {
      if (!this.dirs.has(dir)) {
        this.disk.mkdirSync(dir);
        this.dirs.add(dir);
        this.unsyncedDirs.add(path.dirname(dir));
      }
      fd = this.disk.openSync(file, true);
    } catch {
      return undefined;
    }
    this.unsyncedDirs.add(dir);
    this.keepRead(key, { fd, entry });
    return fd;
  }

  /** Keeps `file` among the files opened for readNow() and writeNow(), closing the oldest
   *  beyond their bound. */
  private keepRead(key: string, file: ReadFile): void {
    this.readFiles.set(key, file);
    while (this.readFiles.size > this.maxReadFiles) {
      const oldest = this.readFiles.keys().next().value;
      if (oldest === undefined || oldest === key) break;
      this.closeRead(oldest);
    }
  }

  /** A descriptor of the grain's file for synchronous use while `entry` is the grain's,
   *  opened now when needed (see openForRead); undefined when it cannot be opened. */
  syncFd(key: string, entry: Entry): number | undefined {
    return this.openForRead(key, entry) ? this.readFd(key, entry) : undefined;
  }

  /** Told before a file opened for readNow() closes (its descriptor may be published to
   *  the FUSE binding, see native.ts). */
  closingRead: (entry: Entry) => void = () => undefined;

  closeRead(key: string): void {
    const file = this.readFiles.get(key);
    if (!file) return;
    this.readFiles.delete(key);
    this.closingRead(file.entry);
    try {
      this.disk.closeSync(file.fd);
    } catch {
      // Closing a descriptor open for reading loses nothing.
    }
  }

  /** Runs `fn` on the open file of grain `idx` (opened, or created empty, when needed);
   *  the file stays open until `fn` is done. */
  async withFile<T>(imageId: number, idx: number, fn: (handle: GrainHandle) => T | Promise<T>): Promise<T> {
    const file = this.open(imageId, idx);
    file.users++;
    try {
      return await fn(await file.handle);
    } finally {
      file.users--;
      if (file.closing && file.users === 0) this.closeNow(file);
    }
  }

  private open(imageId: number, idx: number): OpenFile {
    const key = `${imageId}:${idx}`;
    const known = this.files.get(key);
    if (known) {
      this.files.delete(key);
      this.files.set(key, known);
      return known;
    }
    const name = this.fileOf(imageId, idx);
    // A file still being removed (its grain was just dropped) must be gone before the new
    // grain's file is opened, or the removal would unlink the new one's bytes.
    const removing = this.removing.get(key) ?? Promise.resolve();
    const handle = removing.then(() => this.ensureDir(path.dirname(name))).then(() => {
      this.unsyncedDirs.add(path.dirname(name)); // the open may create the file
      return this.disk.open(name);
    });
    const file: OpenFile = { handle, users: 0, closing: false };
    handle.then(
      (h) => {
        if (this.files.get(key) === file) this.fds.set(key, h.fd);
      },
      () => {
        if (this.files.get(key) === file) this.files.delete(key);
      },
    );
    this.files.set(key, file);
    while (this.files.size > this.maxOpenFiles) {
      const oldest = this.files.keys().next().value;
      if (oldest === undefined) break;
      this.close(oldest);
    }
    return file;
  }

  ensureDir(dir: string): Promise<void> {
    if (this.dirs.has(dir)) return Promise.resolve();
    this.unsyncedDirs.add(path.dirname(dir));
    return this.disk.mkdir(dir).then(() => void this.dirs.add(dir));
  }

  /** A file was created or renamed into `dir`. */
  entered(dir: string): void {
    this.unsyncedDirs.add(dir);
  }

  /** fsyncs the directories that may have gained entries, parents first (a new directory's
   *  own entry is in its parent). One that fails stays to be fsynced again. */
  async syncDirs(): Promise<void> {
    const dirs = [...this.unsyncedDirs].sort((a, b) => a.length - b.length);
    this.unsyncedDirs.clear();
    for (let i = 0; i < dirs.length; i++) {
      try {
        await this.disk.syncDir(dirs[i] as string);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue; // removed meanwhile (its image was deleted)
        for (const dir of dirs.slice(i)) this.unsyncedDirs.add(dir);
        throw e;
      }
    }
  }

  /** Forgets that an image's directory exists (it is being removed). */
  forgetDir(dir: string): void {
    this.dirs.delete(dir);
  }

  /** Closes the grain's file once nobody uses it. */
  close(key: string): void {
    const file = this.files.get(key);
    if (!file) return;
    this.files.delete(key);
    this.fds.delete(key);
    file.closing = true;
    if (file.users === 0) this.closeNow(file);
  }

  private closeNow(file: OpenFile): void {
    const closed: Promise<void> = file.handle
      .then((h) => h.close())
      .catch(() => undefined)
      .finally(() => this.closing.delete(closed));
    this.closing.add(closed);
  }

  /** Resolves once the grain's file, if it is being opened, is open (or failed to open). */
  ready(key: string): Promise<void> {
    const file = this.files.get(key);
    return file ? file.handle.then(() => undefined, () => undefined) : Promise.resolve();
  }

  /** Resolves once the closes under way now have finished. */
  async closed(): Promise<void> {
    await Promise.all(this.closing);
  }

  /** The removal under way of the grain's file, if any. */
  removal(key: string): Promise<void> | undefined {
    return this.removing.get(key);
  }

  /** Removes a dropped grain's file; opening that grain's file again waits for it. */
  remove(key: string, file: string): Promise<void> {
    const before = this.removing.get(key) ?? Promise.resolve();
    const removal: Promise<void> = before
      .then(() => this.disk.rm(file))
      .finally(() => {
        if (this.removing.get(key) === removal) this.removing.delete(key);
      });
    this.removing.set(key, removal);
    return removal;
  }

  /** Reads the whole grain file into `target` at `at` (grain-size bytes; the part the file
   *  lacks reads as zeros). Returns `target`. */
  async readFull(imageId: number, idx: number, target: Buffer, at: number): Promise<Buffer> {
    const done = await this.withFile(imageId, idx, async (handle) => {
      let got = 0;
      while (got < this.grainSize) {
        const { bytesRead } = await handle.read(target, at + got, this.grainSize - got, got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      return got;
    });
    if (done < this.grainSize) target.fill(0, at + done, at + this.grainSize);
    return target;
  }

  /** Closes every file. */
  async closeAll(): Promise<void> {
    const files = [...this.files.values()];
    this.files.clear();
    this.fds.clear();
    for (const key of [...this.readFiles.keys()]) this.closeRead(key);
    await Promise.all(files.map((f) => f.handle.then((h) => h.close()).catch(() => undefined)));
  }
}
