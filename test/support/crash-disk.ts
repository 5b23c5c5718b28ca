/* A Disk (lib/grainmap/disk.ts) over a real directory that records what a power loss could
 * undo, and builds such a state on demand: crashInto() writes a directory where
 *   - each file holds what its last fdatasync made durable, plus any of the writes and
 *     truncates since (each write sector by sector, so a write may tear), chosen at random;
 *   - directory entries (new files, renames, removals, new directories) are those a
 *     directory fsync made durable, plus a random prefix of the later ones in order (a
 *     journaling file system commits its metadata in order, but any amount of it);
 *   - the SQLite database is the copy taken at the last FULL commit (Disk.committed), or,
 *     when `leakSqlite` says so, everything it committed (a checkpoint or write-back ran).
 * Everything else passes through to the real files, which the live cache keeps using.
 * It also injects local disk errors: fail() makes the next writeSync (after `partial`
 * bytes), datasync or syncDir throw an errno, or the report of SQLite's next FULL commit
 * (as a commit whose fsync failed would). */

import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { Disk, GrainHandle, NODE_DISK } from '../../lib/grainmap/disk';

type FileOp = { kind: 'write'; at: number; data: Buffer } | { kind: 'truncate'; length: number };
type NsOp =
  | { kind: 'link'; name: string; id: number }
  | { kind: 'mkdir'; name: string }
  | { kind: 'rename'; from: string; to: string }
  | { kind: 'unlink'; name: string };

interface Model {
  durable: Buffer;
  pending: FileOp[];
}

export type FaultOp = 'writeSync' | 'datasync' | 'syncDir' | 'commit';

interface Fault {
  op: FaultOp;
  code: string;
  /** writeSync: bytes written (and reported) before the failure, in one short write. */
  partial: number;
}

export interface CrashOptions {
  /** Chance that each unsynced write (per sector), truncate or directory change survives. */
  keep: number;
  /** Take everything SQLite committed, not just what its last FULL commit made durable. */
  leakSqlite: boolean;
}

const errnoError = (code: string): NodeJS.ErrnoException => Object.assign(new Error(`${code} (injected)`), { code });

export class CrashDisk implements Disk {
  private nextId = 1;
  private readonly models = new Map<number, Model>();
  /** Current names (relative to root): a file id, or 'dir'. */
  private readonly names = new Map<string, number | 'dir'>();
  private readonly journal: { op: NsOp; durable: boolean; dirs: string[] }[] = [];
  private readonly fds = new Map<number, number>();
  private sqlite: { db: Buffer; wal: Buffer | undefined } | undefined;
  private readonly faults: Fault[] = [];
  /** Counts of calls, for tests that check what fsync did. */
  readonly calls = { datasync: 0, syncDir: 0 };

  constructor(
    readonly root: string,
    private readonly boot = 'boot-1',
  ) {}

  /** Makes the next `op` fail with `code` (writeSync after writing `partial` bytes). */
  fail(op: FaultOp, code: string, partial = 0): void {
    this.faults.push({ op, code, partial });
  }

  private fault(op: FaultOp): Fault | undefined {
    const i = this.faults.findIndex((f) => f.op === op);
    if (i < 0) return undefined;
    const [f] = this.faults.splice(i, 1);
    return f;
  }

  private rel(p: string): string {
    return path.relative(this.root, p);
  }

  private create(file: string): number {
    const id = this.nextId++;
    this.models.set(id, { durable: Buffer.alloc(0), pending: [] });
    this.names.set(this.rel(file), id);
    this.log({ kind: 'link', name: this.rel(file), id });
    return id;
  }

  private log(op: NsOp): void {
    const dirs = op.kind === 'rename' ? [path.dirname(op.from), path.dirname(op.to)] : [path.dirname(op.name)];
    this.journal.push({ op, durable: false, dirs });
  }

  /** The id of `file`, created in the model when it is new (or was made behind the model). */
  private idOf(file: string, create: boolean): number | undefined {
    const known = this.names.get(this.rel(file));
    if (typeof known === 'number') return known;
    return create ? this.create(file) : undefined;
  }

  private record(fd: number, op: FileOp): void {
    const id = this.fds.get(fd);
    if (id !== undefined) this.models.get(id)?.pending.push(op);
  }

  private synced(fd: number): void {
    const id = this.fds.get(fd);
    const model = id === undefined ? undefined : this.models.get(id);
    if (!model) return;
    const size = fs.fstatSync(fd).size;
    const data = Buffer.alloc(size);
    let got = 0;
    while (got < size) {
      const n = fs.readSync(fd, data, got, size - got, got);
      if (n === 0) break;
      got += n;
    }
    model.durable = data;
    model.pending = [];
  }

  async open(file: string): Promise<GrainHandle> {
    const exists = this.names.has(this.rel(file));
    const handle = await fsp.open(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
    const id = exists ? this.idOf(file, false) : this.create(file);
    if (id !== undefined) this.fds.set(handle.fd, id);
    const fd = handle.fd;
    return {
      fd,
      read: (buffer, offset, length, position) => handle.read(buffer, offset, length, position),
      write: async (buffer, offset, length, position) => {
        const r = await handle.write(buffer, offset, length, position);
        this.record(fd, { kind: 'write', at: position, data: Buffer.from(buffer.subarray(offset, offset + r.bytesWritten)) });
        return r;
      },
      datasync: async () => {
        this.calls.datasync++;
        const f = this.fault('datasync');
        if (f) throw errnoError(f.code);
        await handle.datasync();
        this.synced(fd);
      },
      truncate: async (length) => {
        await handle.truncate(length);
        this.record(fd, { kind: 'truncate', length });
      },
      close: async () => {
        this.fds.delete(fd);
        await handle.close();
      },
    };
  }

  openSync(file: string, create: boolean): number {
    const fd = NODE_DISK.openSync(file, create);
    const id = this.idOf(file, create);
    if (id !== undefined) this.fds.set(fd, id);
    return fd;
  }

  closeSync(fd: number): void {
    this.fds.delete(fd);
    fs.closeSync(fd);
  }

  writeSync(fd: number, buffer: Buffer, offset: number, length: number, position: number): number {
    const f = this.fault('writeSync');
    let n = length;
    if (f) {
      if (f.partial <= 0 || f.partial >= length) throw errnoError(f.code);
      n = f.partial;
      this.faults.unshift({ op: 'writeSync', code: f.code, partial: 0 }); // the rest fails
    }
    const written = fs.writeSync(fd, buffer, offset, n, position);
    this.record(fd, { kind: 'write', at: position, data: Buffer.from(buffer.subarray(offset, offset + written)) });
    return written;
  }

  readSync(fd: number, buffer: Buffer, offset: number, length: number, position: number): number {
    return fs.readSync(fd, buffer, offset, length, position);
  }

  ftruncateSync(fd: number, length: number): void {
    fs.ftruncateSync(fd, length);
    this.record(fd, { kind: 'truncate', length });
  }

  sizeSync(fd: number): number {
    return fs.fstatSync(fd).size;
  }

  async writeFile(file: string, data: Buffer): Promise<void> {
    await fsp.writeFile(file, data, { mode: 0o600 });
    const id = this.idOf(file, true) as number;
    const model = this.models.get(id) as Model;
    model.pending.push({ kind: 'truncate', length: 0 }, { kind: 'write', at: 0, data: Buffer.from(data) });
  }

  async rename(from: string, to: string): Promise<void> {
    await fsp.rename(from, to);
    const id = this.names.get(this.rel(from));
    this.names.delete(this.rel(from));
    if (id !== undefined) this.names.set(this.rel(to), id);
    this.log({ kind: 'rename', from: this.rel(from), to: this.rel(to) });
  }

  private forget(target: string): void {
    const name = this.rel(target);
    for (const known of [...this.names.keys()]) {
      if (known !== name && !known.startsWith(`${name}/`)) continue;
      this.names.delete(known);
      this.log({ kind: 'unlink', name: known });
    }
  }

  async rm(target: string): Promise<void> {
    await fsp.rm(target, { recursive: true, force: true });
    this.forget(target);
  }

  rmSync(target: string): void {
    fs.rmSync(target, { recursive: true, force: true });
    this.forget(target);
  }

  private madeDirs(dir: string): void {
    const parts = this.rel(dir).split(path.sep).filter((p) => p !== '');
    for (let i = 1; i <= parts.length; i++) {
      const name = parts.slice(0, i).join(path.sep);
      if (this.names.has(name)) continue;
      this.names.set(name, 'dir');
      this.log({ kind: 'mkdir', name });
    }
  }

  async mkdir(dir: string): Promise<void> {
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
    this.madeDirs(dir);
  }

  mkdirSync(dir: string): void {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    this.madeDirs(dir);
  }

  readdirSync(dir: string): string[] {
    return fs.readdirSync(dir);
  }

  exists(file: string): boolean {
    return fs.existsSync(file);
  }

  async syncDir(dir: string): Promise<void> {
    this.calls.syncDir++;
    const f = this.fault('syncDir');
    if (f) throw errnoError(f.code);
    await NODE_DISK.syncDir(dir);
    const name = this.rel(dir) || '.';
    for (const entry of this.journal) if (entry.dirs.some((d) => (d || '.') === name)) entry.durable = true;
  }

  bootId(): string {
    return this.boot;
  }

  committed(file: string): void {
    const f = this.fault('commit');
    if (f) throw errnoError(f.code);
    const wal = `${file}-wal`;
    this.sqlite = { db: fs.readFileSync(file), wal: fs.existsSync(wal) ? fs.readFileSync(wal) : undefined };
    this.sqliteFile = file;
  }

  private sqliteFile: string | undefined;

  /** Writes into `into` (an empty directory) a state a power loss now could leave. */
  crashInto(into: string, rng: () => number, options: CrashOptions): void {
    const tree = new Map<string, number | 'dir'>([['', 'dir']]);
    const parentOf = (name: string): string => (path.dirname(name) === '.' ? '' : path.dirname(name));
    const prefix = Math.floor(rng() * (this.journal.length + 1));
    this.journal.forEach(({ op, durable }, i) => {
      if (!durable && i >= prefix) return;
      if (op.kind === 'mkdir' || op.kind === 'link') {
        if (tree.get(parentOf(op.name)) === 'dir') tree.set(op.name, op.kind === 'mkdir' ? 'dir' : op.id);
      } else if (op.kind === 'rename') {
        const id = tree.get(op.from);
        if (id === undefined || tree.get(parentOf(op.to)) !== 'dir') return;
        tree.delete(op.from);
        tree.set(op.to, id);
      } else {
        tree.delete(op.name);
      }
    });
    const names = [...tree.keys()].sort((a, b) => a.length - b.length);
    for (const name of names) {
      const id = tree.get(name);
      const target = path.join(into, name);
      if (id === 'dir') {
        fs.mkdirSync(target, { recursive: true });
        continue;
      }
      if (id === undefined || !fs.existsSync(path.dirname(target))) continue;
      fs.writeFileSync(target, this.survivor(id, rng, options.keep));
    }
    if (this.sqliteFile && this.sqlite) {
      const base = path.join(into, path.relative(this.root, this.sqliteFile));
      const take = options.leakSqlite
        ? { db: fs.readFileSync(this.sqliteFile), wal: fs.existsSync(`${this.sqliteFile}-wal`) ? fs.readFileSync(`${this.sqliteFile}-wal`) : undefined }
        : this.sqlite;
      fs.writeFileSync(base, take.db);
      if (take.wal) fs.writeFileSync(`${base}-wal`, take.wal);
    }
  }

  /** A file's content after a power loss: what was synced, and some of what was not. */
  private survivor(id: number, rng: () => number, keep: number): Buffer {
    const model = this.models.get(id) as Model;
    let data = Buffer.from(model.durable);
    for (const op of model.pending) {
      if (op.kind === 'truncate') {
        if (rng() >= keep) continue;
        const next = Buffer.alloc(op.length);
        data.copy(next, 0, 0, Math.min(op.length, data.length));
        data = next;
        continue;
      }
      for (let at = 0; at < op.data.length; at += 512) {
        if (rng() >= keep) continue;
        const piece = op.data.subarray(at, Math.min(at + 512, op.data.length));
        const end = op.at + at + piece.length;
        if (end > data.length) {
          const grown = Buffer.alloc(end);
          data.copy(grown);
          data = grown;
        }
        piece.copy(data, op.at + at);
      }
    }
    return data;
  }
}
