/* fsx for blobdisk: random writes, reads, truncates, fsyncs, reopens and remounts on files
 * in a real mount, every read compared byte for byte with an in-memory model of what the
 * files must hold. The driver (this file) owns the seeded generator, the model and the
 * mounts; a worker child (fsx-worker.ts) makes the file system calls, since a FUSE callback
 * runs on the mounting process's event loop and nothing here may wait on it. The op
 * sequence depends on the seed alone, never on timing, so a seed replays the same ops
 * (what the background flusher does in between may differ). Used by test/e2e/fsx.test.ts
 * and by `npm run soak` (bench/soak.ts). */

import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import readline from 'node:readline';
import type { ContainerClient } from '@azure/storage-blob';
import { ROOT, cliEnv, makeTempDir, startMount, within, type RunningMount } from './mount';
import { KiB, MiB, containerOn, flushCli } from './write-helpers';

const SECTOR = 512;
/** What the last-ops list in a failure report holds. */
const LAST_OPS = 20;
/** An op may wait 30 s for room in a cache full of dirty data, and an fsync with --sync cloud
 *  waits for an upload; past this it counts as hung. */
const OP_TIMEOUT_MS = 120_000;
/** Reads of whole files go in pieces of this size. */
const VERIFY_CHUNK = MiB;
/** Write and truncate events kept per file, to say in a failure report which op wrote the
 *  bytes that were expected and which op's data came back instead. */
const HISTORY_CAP = 20_000;
const WORKER_JS = path.join(ROOT, 'dist', 'test', 'support', 'fsx-worker.js');

// ---------------------------------------------------------------------------------------
// Worker protocol (JSON lines; the worker answers each request before the next is sent)

export type WorkerRequest =
  | { id: number; op: 'open'; file: string; direct: boolean; truncate: boolean }
  | { id: number; op: 'write'; file: string; offset: number; data: string }
  | { id: number; op: 'read'; file: string; offset: number; length: number; via: ReadVia }
  | { id: number; op: 'truncate'; file: string; size: number; byPath: boolean }
  | { id: number; op: 'sync'; file: string; dataOnly: boolean }
  | { id: number; op: 'stat'; file: string; byPath: boolean }
  | { id: number; op: 'exit' };

export type WorkerReply =
  | { id: number; ok: true; n?: number; data?: string }
  | { id: number; ok: false; code: string; message: string };

/** Through the file's own handle (the kernel's page cache may answer), a handle opened for
 *  this read (the kernel drops its cached pages), or one opened with O_DIRECT (no cache). */
export type ReadVia = 'fd' | 'fresh' | 'direct';

type Request = WorkerRequest extends infer R ? (R extends { id: number } ? Omit<R, 'id'> : never) : never;

// ---------------------------------------------------------------------------------------
// Seeded generator

/** mulberry32: small, fast and good enough to pick ops and fill buffers reproducibly. */
export class Prng {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  u32(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  /** An integer in [0, n). */
  below(n: number): number {
    return Math.floor((this.u32() / 2 ** 32) * n);
  }

  /** An integer in [lo, hi]. */
  between(lo: number, hi: number): number {
    return lo + this.below(hi - lo + 1);
  }

  chance(p: number): boolean {
    return this.u32() / 2 ** 32 < p;
  }

  /** An integer in [1, max], log-uniform: small I/O as often as large. */
  logUniform(max: number): number {
    return Math.max(1, Math.min(max, Math.floor(2 ** ((this.u32() / 2 ** 32) * Math.log2(max + 1)))));
  }

  pick<K extends string>(weights: Readonly<Record<K, number>>): K {
    const entries = Object.entries(weights) as [K, number][];
    const total = entries.reduce((s, [, w]) => s + w, 0);
    let r = (this.u32() / 2 ** 32) * total;
    for (const [k, w] of entries) {
      if (r < w) return k;
      r -= w;
    }
    return (entries[entries.length - 1] as [K, number])[0];
  }
}

/** The bytes of a write: `length` bytes from the generator seeded with `seed` (or zeros). */
export function writeData(seed: number, length: number, zeros: boolean): Buffer {
  const out = Buffer.alloc(length);
  if (zeros) return out;
  const g = new Prng(seed);
  let i = 0;
  for (; i + 4 <= length; i += 4) out.writeUInt32LE(g.u32(), i);
  if (i < length) {
    const last = g.u32();
    for (let k = 0; i < length; i++, k++) out[i] = (last >>> (8 * k)) & 0xff;
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Model

/** What one file must hold. Bytes past `size` are kept zero, so growing (by a write past
 *  the end or a truncate) shows zeros without further work. */
class ModelFile {
  readonly bytes: Buffer;
  size = 0;
  /** Writes and truncates, oldest first (capped), for failure reports. */
  readonly history: Op[] = [];

  constructor(
    readonly name: string,
    readonly kind: 'page' | 'block',
    maxSize: number,
  ) {
    this.bytes = Buffer.alloc(maxSize);
  }

  write(offset: number, data: Buffer): void {
    data.copy(this.bytes, offset);
    this.size = Math.max(this.size, offset + data.length);
  }

  truncate(size: number): void {
    if (size < this.size) this.bytes.fill(0, size, this.size);
    this.size = size;
  }

  /** What a read of `length` bytes at `offset` must return. */
  slice(offset: number, length: number): Buffer {
    if (offset >= this.size) return Buffer.alloc(0);
    return this.bytes.subarray(offset, Math.min(this.size, offset + length));
  }

  remember(op: Op): void {
    this.history.push(op);
    if (this.history.length > HISTORY_CAP) this.history.splice(0, HISTORY_CAP / 2);
  }
}

// ---------------------------------------------------------------------------------------
// Ops

export type Op =
  | { n: number; kind: 'write'; file: number; offset: number; length: number; seed: number; zeros: boolean }
  | { n: number; kind: 'read'; file: number; offset: number; length: number; via: ReadVia }
  | { n: number; kind: 'truncate'; file: number; size: number; byPath: boolean }
  | { n: number; kind: 'sync'; file: number; dataOnly: boolean }
  | { n: number; kind: 'reopen'; file: number; direct: boolean; truncate: boolean }
  | { n: number; kind: 'stat'; file: number; byPath: boolean }
  | { n: number; kind: 'verify'; file: number }
  | { n: number; kind: 'flush'; file: number };

export type OpKind = Op['kind'];

/** How often each op is drawn. A flush runs `blobdisk flush` and downloads the blob, so it
 *  is rare; whole-file verification happens after every remount anyway. */
const WEIGHTS: Readonly<Record<OpKind, number>> = {
  write: 36,
  read: 30,
  truncate: 8,
  sync: 6,
  reopen: 5,
  stat: 6,
  verify: 1,
  flush: 0.5,
};

/** One mount's settings, drawn per mount so a long run sees them all. */
interface MountChoice {
  readonly sync: 'local' | 'cloud';
  readonly writeBackDelay: string;
  readonly cold: boolean;
}

export interface FsxOptions {
  readonly seed: number;
  readonly ops: number;
  /** Files exercised side by side: even ones page blobs (*.img), odd ones block blobs (*.bin). */
  readonly files: number;
  readonly maxFileSize: number;
  /** Longest single write or read. */
  readonly maxIo: number;
  readonly grainSize: number;
  readonly cacheSize: number;
  /** Unmount and mount again after every this many ops. */
  readonly remountEvery: number;
  /** Every this-many-th remount starts on an empty cache directory; others but the first do by chance (1/4). */
  readonly coldEvery: number;
  readonly connectionString: string;
  readonly container: string;
  /** Progress and trace lines. */
  readonly log: (line: string) => void;
  /** A progress line at most this often (0: none). */
  readonly progressEverySeconds: number;
  /** Log every op as it runs. */
  readonly trace: boolean;
  /** Whether files are ever made smaller (truncate down, open with O_TRUNC). */
  readonly shrink: boolean;
  /** Each mount's --write-back-delay is drawn from these (seconds). */
  readonly writeBackDelays: readonly string[];
  /** Run only the ops on these files (names such as f2.img), to narrow a failure down. The
   *  files are independent, so the ops on them stay exactly those of the full run. */
  readonly only?: readonly string[];
}

export const FSX_DEFAULTS = Object.freeze({
  files: 4,
  maxFileSize: 8 * MiB,
  maxIo: 256 * KiB,
  grainSize: 64 * KiB,
  cacheSize: 4 * MiB,
  remountEvery: 1000,
  coldEvery: 2,
  shrink: true,
  writeBackDelays: Object.freeze(['0', '0.1', '0.5']) as readonly string[],
  progressEverySeconds: 30,
  trace: false,
});

export interface FsxSummary {
  readonly seed: number;
  readonly ops: number;
  readonly counts: Readonly<Record<OpKind, number>>;
  readonly remounts: number;
  readonly coldRemounts: number;
  readonly bytesWritten: number;
  /** Bytes read and compared with the model (ops and whole-file checks). */
  readonly bytesCompared: number;
  /** Whole files compared with a direct SDK download. */
  readonly azureChecks: number;
  /** Wall time spent in each kind of op, and in unmounting and mounting again (with the checks after). */
  readonly secondsByKind: Readonly<Record<OpKind | 'remount', number>>;
  readonly seconds: number;
}

/** A difference from the model, an error of a call, or a hang; `message` is the whole report. */
export class FsxFailure extends Error {
  constructor(
    message: string,
    readonly seed: number,
    readonly op: number,
  ) {
    super(message);
    this.name = 'FsxFailure';
  }
}

/** Raised inside the run; turned into an FsxFailure with the context around it. */
class Finding extends Error {
  constructor(
    message: string,
    readonly file?: string,
  ) {
    super(message);
  }
}

// ---------------------------------------------------------------------------------------
// Worker client

class Worker {
  private nextId = 1;
  private readonly waiting = new Map<number, (reply: WorkerReply) => void>();
  private stderr = '';
  private readonly exited: Promise<void>;

  private constructor(private readonly child: ChildProcess) {
    const lines = readline.createInterface({ input: child.stdout as NodeJS.ReadableStream, crlfDelay: Infinity });
    lines.on('line', (line) => {
      const reply = JSON.parse(line) as WorkerReply;
      const resolve = this.waiting.get(reply.id);
      this.waiting.delete(reply.id);
      resolve?.(reply);
    });
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (d: string) => (this.stderr = (this.stderr + d).slice(-4000)));
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        for (const [id, answer] of this.waiting) answer({ id, ok: false, code: 'WORKER_EXIT', message: `worker exited (${signal ?? code}): ${this.stderr.trim()}` });
        this.waiting.clear();
        resolve();
      });
    });
  }

  static start(mnt: string): Worker {
    return new Worker(spawn(process.execPath, [WORKER_JS, mnt], { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] }));
  }

  /** The reply of a successful call; throws a Finding for an error, a dead worker or a hang. */
  async call(request: Request): Promise<{ n?: number; data?: string }> {
    const id = this.nextId++;
    const answered = new Promise<WorkerReply>((resolve) => this.waiting.set(id, resolve));
    this.child.stdin?.write(`${JSON.stringify({ ...request, id })}\n`);
    const reply = await within(answered, OP_TIMEOUT_MS, undefined);
    if (reply === undefined) throw new Finding(`no answer within ${OP_TIMEOUT_MS / 1000} s (the call hangs in the mount)`);
    if (!reply.ok) throw new Finding(`the call failed: ${reply.code}: ${reply.message}`);
    return reply;
  }

  /** Closes every handle and ends the worker. */
  async exit(): Promise<void> {
    await this.call({ op: 'exit' });
    this.child.stdin?.end();
    if ((await within(this.exited.then(() => true), 10_000, false)) === false) this.kill();
  }

  kill(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }
}

// ---------------------------------------------------------------------------------------
// The run

const roundDown = (n: number, to: number): number => Math.floor(n / to) * to;
const roundUp = (n: number, to: number): number => Math.ceil(n / to) * to;
const hex = (b: Buffer): string => b.toString('hex').replace(/(..)/g, '$1 ').trim() || '(nothing)';

function describeOp(op: Op, files: readonly ModelFile[]): string {
  const name = files[op.file]?.name ?? `file ${op.file}`;
  const at = (o: number, l: number): string => `[${o}, ${o + l}) len ${l}`;
  switch (op.kind) {
    case 'write':
      return `#${op.n} write ${name} ${at(op.offset, op.length)}${op.offset % SECTOR === 0 && op.length % SECTOR === 0 ? ' aligned' : ''} ${op.zeros ? 'zeros' : `data 0x${op.seed.toString(16)}`}`;
    case 'read':
      return `#${op.n} read ${name} ${at(op.offset, op.length)} via ${op.via}`;
    case 'truncate':
      return `#${op.n} truncate ${name} to ${op.size}${op.byPath ? ' by path' : ''}`;
    case 'sync':
      return `#${op.n} ${op.dataOnly ? 'fdatasync' : 'fsync'} ${name}`;
    case 'reopen':
      return `#${op.n} close and reopen ${name}${op.direct ? ' O_DIRECT' : ''}${op.truncate ? ' O_TRUNC' : ''}`;
    case 'stat':
      return `#${op.n} stat ${name}${op.byPath ? ' by path' : ''}`;
    case 'verify':
      return `#${op.n} read all of ${name}`;
    case 'flush':
      return `#${op.n} blobdisk flush ${name}, then compare the blob in Azure`;
  }
}

/** End of the run of differing bytes that starts at `at`. */
function differingRun(got: Buffer, want: Buffer, at: number): number {
  let end = at;
  while (end < got.length && end < want.length && got[end] !== want[end]) end++;
  return Math.max(end, Math.min(at + 1, got.length));
}

/** Index of the first difference of `got` from `want`, or undefined. */
function firstDiff(got: Buffer, want: Buffer): number | undefined {
  const n = Math.min(got.length, want.length);
  for (let i = 0; i < n; i++) if (got[i] !== want[i]) return i;
  return got.length === want.length ? undefined : n;
}

class Run {
  /** Draws the op kinds, the files and the mounts. */
  private readonly rng: Prng;
  /** Draws the parameters of the ops on each file: a file's ops then depend on that file
   *  alone, so narrowing a run down to one file (`only`) replays them unchanged. */
  private readonly fileRngs: Prng[] = [];
  private readonly files: ModelFile[] = [];
  /** The files whose ops run (all, unless narrowed down with `only`). */
  private readonly live: ModelFile[];
  private readonly lastOps: string[] = [];
  private readonly counts: Record<OpKind, number> = { write: 0, read: 0, truncate: 0, sync: 0, reopen: 0, stat: 0, verify: 0, flush: 0 };
  private readonly seconds: Record<OpKind | 'remount', number> = { write: 0, read: 0, truncate: 0, sync: 0, reopen: 0, stat: 0, verify: 0, flush: 0, remount: 0 };
  private container!: ContainerClient;
  private home!: string;
  private mnt: string | undefined;
  private mount: RunningMount | undefined;
  private worker: Worker | undefined;
  private cacheDir = '';
  private mountChoice: MountChoice = { sync: 'local', writeBackDelay: '0.5', cold: true };
  private mounts = 0;
  private remounts = 0;
  private coldRemounts = 0;
  private bytesWritten = 0;
  private bytesCompared = 0;
  private azureChecks = 0;
  private opNumber = 0;
  private readonly started = Date.now();
  private lastProgress = Date.now();

  constructor(private readonly o: FsxOptions) {
    this.rng = new Prng(o.seed);
    const streams = new Prng(o.seed ^ 0x5eed5eed);
    for (let i = 0; i < o.files; i++) this.fileRngs.push(new Prng(streams.u32()));
    for (let i = 0; i < o.files; i++) {
      const page = i % 2 === 0;
      this.files.push(new ModelFile(`f${i}.${page ? 'img' : 'bin'}`, page ? 'page' : 'block', o.maxFileSize));
    }
    this.live = this.files.filter((f) => o.only === undefined || o.only.includes(f.name));
    if (this.live.length === 0) throw new Error(`none of ${o.only?.join(', ')} is among the files ${this.files.map((f) => f.name).join(', ')}`);
  }

  async run(): Promise<FsxSummary> {
    try {
      this.container = await containerOn(this.o.connectionString, this.o.container);
      this.home = await makeTempDir('blobdisk-fsx-home-');
      await this.startMount(true);
      for (const f of this.live) await this.worker!.call({ op: 'open', file: f.name, direct: false, truncate: true });
      for (this.opNumber = 1; this.opNumber <= this.o.ops; this.opNumber++) {
        if (this.opNumber > 1 && (this.opNumber - 1) % this.o.remountEvery === 0) {
          const t = Date.now();
          await this.remount();
          this.seconds.remount += (Date.now() - t) / 1000;
        }
        const op = this.nextOp(this.opNumber);
        if (!this.live.includes(this.files[op.file] as ModelFile)) continue;
        this.note(describeOp(op, this.files));
        const t = Date.now();
        await this.execute(op);
        this.seconds[op.kind] += (Date.now() - t) / 1000;
        this.progress();
      }
      this.opNumber = this.o.ops;
      this.note(`final unmount, then every blob compared in Azure`);
      await this.stopMount();
      for (const f of this.live) await this.checkAzure(f);
    } catch (e) {
      throw this.failure(e);
    } finally {
      this.worker?.kill();
      await this.mount?.stop();
      if (this.cacheDir !== '') await fsp.rm(this.cacheDir, { recursive: true, force: true });
    }
    return {
      seed: this.o.seed,
      ops: this.o.ops,
      counts: { ...this.counts },
      remounts: this.remounts,
      coldRemounts: this.coldRemounts,
      bytesWritten: this.bytesWritten,
      bytesCompared: this.bytesCompared,
      azureChecks: this.azureChecks,
      secondsByKind: { ...this.seconds },
      seconds: (Date.now() - this.started) / 1000,
    };
  }

  private note(line: string): void {
    this.lastOps.push(line);
    if (this.lastOps.length > LAST_OPS) this.lastOps.shift();
    // UTC wall time, as Azurite's request log and the mount's log print it.
    if (this.o.trace) this.o.log(`${new Date().toISOString().slice(11, 23)} ${line}`);
  }

  private progress(): void {
    if (this.o.progressEverySeconds <= 0 || Date.now() - this.lastProgress < this.o.progressEverySeconds * 1000) return;
    this.lastProgress = Date.now();
    const s = (Date.now() - this.started) / 1000;
    this.o.log(
      `${this.opNumber}/${this.o.ops} ops, ${Math.round(this.opNumber / s)} ops/s, ${this.remounts} remounts (${this.coldRemounts} cold), ` +
        `${(this.bytesWritten / MiB).toFixed(0)} MiB written, ${(this.bytesCompared / MiB).toFixed(0)} MiB compared, ${this.azureChecks} blobs checked in Azure`,
    );
  }

  // -------------------------------------------------------------------------------------
  // Mounts

  private async startMount(cold: boolean): Promise<void> {
    // Drawn before anything else of the mount, so the op sequence stays a function of the seed.
    const sync = this.rng.chance(0.2) ? 'cloud' : 'local';
    const delays = this.o.writeBackDelays;
    const writeBackDelay = delays[this.rng.below(delays.length)] ?? '0.5';
    this.mountChoice = { sync, writeBackDelay, cold };
    if (cold) {
      if (this.cacheDir !== '') await fsp.rm(this.cacheDir, { recursive: true, force: true });
      this.cacheDir = path.join(await makeTempDir('blobdisk-fsx-cache-'), 'cache');
    }
    this.mounts++;
    this.note(`mount #${this.mounts}: ${this.describeMount()}`);
    const args = [
      '--connection-string', this.o.connectionString,
      '--container', this.o.container,
      '--cache-dir', this.cacheDir,
      '--grain-size', String(this.o.grainSize),
      '--cache-size', String(this.o.cacheSize),
      '--sync', sync,
      '--write-back-delay', writeBackDelay,
      '--drain-timeout', '30',
      '--log-level', 'warn',
    ];
    this.mount = await startMount(args, { env: cliEnv({}, this.home), ...(this.mnt !== undefined ? { mnt: this.mnt } : {}) });
    this.mnt = this.mount.mnt;
    this.worker = Worker.start(this.mnt);
  }

  private describeMount(): string {
    const c = this.mountChoice;
    return `grain ${this.o.grainSize / KiB}K, cache ${this.o.cacheSize / KiB}K${c.cold ? ' (empty)' : ' (same as before)'}, --sync ${c.sync}, --write-back-delay ${c.writeBackDelay}`;
  }

  /** Closes every file, unmounts (which drains every dirty grain to Azure) and insists on a clean exit. */
  private async stopMount(): Promise<void> {
    await this.worker?.exit();
    this.worker = undefined;
    const mount = this.mount;
    if (!mount) return;
    const r = await mount.stop();
    this.mount = undefined;
    if (r.code !== 0 || !r.clean) {
      const tail = r.stderr.trim().split('\n').slice(-15).join('\n  ');
      throw new Finding(`unmount did not end cleanly (exit ${r.signal ?? r.code}${r.clean ? '' : ', had to be forced'}):\n  ${tail}`);
    }
  }

  private async remount(): Promise<void> {
    this.remounts++;
    // The first remount keeps the cache (unless every one is cold), so that even a short
    // run sees both kinds.
    const chance = this.rng.chance(0.25);
    const cold = this.remounts % this.o.coldEvery === 0 || (this.remounts > 1 && chance);
    this.note(`remount #${this.remounts}${cold ? ' with an empty cache' : ''}: unmount`);
    await this.stopMount();
    if (cold) {
      // The new mount must get everything from Azure, so Azure must hold it all now.
      this.coldRemounts++;
      for (const f of this.live) await this.checkAzure(f);
    }
    await this.startMount(cold);
    for (const f of this.files) {
      const direct = this.rng.chance(0.2);
      if (this.live.includes(f)) await this.worker!.call({ op: 'open', file: f.name, direct, truncate: false });
    }
    for (const f of this.live) await this.verifyWhole(f, `after remount #${this.remounts}`);
  }

  // -------------------------------------------------------------------------------------
  // Op generation: offsets that matter (inside, near the end, past it, at grain boundaries)

  private pickOffset(rng: Prng, size: number): number {
    const max = this.o.maxFileSize;
    const g = this.o.grainSize;
    const r = rng.below(100);
    let at: number;
    if (r < 40) at = rng.below(Math.max(1, size));
    else if (r < 55) at = size + rng.between(-64 * KiB, 64 * KiB);
    else if (r < 70) at = size + rng.between(1, MiB); // past the end: a hole
    else if (r < 85) at = rng.below(max / g + 1) * g + rng.between(-600, 600);
    else at = rng.below(max);
    return Math.max(0, Math.min(max - 1, at));
  }

  private nextOp(n: number): Op {
    const kind = this.rng.pick(WEIGHTS);
    const file = this.rng.below(this.files.length);
    const rng = this.fileRngs[file] as Prng;
    const f = this.files[file] as ModelFile;
    const max = this.o.maxFileSize;
    const g = this.o.grainSize;
    switch (kind) {
      case 'write': {
        let offset: number;
        let length: number;
        let zeros: boolean;
        if (rng.chance(0.1)) {
          // Whole grains, often zeros: a zero grain of a page blob becomes Clear Pages.
          length = g * rng.between(1, 4);
          offset = rng.below((max - length) / g + 1) * g;
          zeros = rng.chance(0.4);
        } else {
          offset = this.pickOffset(rng, f.size);
          length = rng.logUniform(this.o.maxIo);
          if (rng.chance(0.25)) {
            offset = roundDown(offset, SECTOR);
            length = roundUp(length, SECTOR);
          }
          zeros = rng.chance(0.05);
        }
        length = Math.min(length, max - offset);
        return { n, kind, file, offset, length, seed: rng.u32(), zeros };
      }
      case 'read': {
        let offset: number;
        let length: number;
        if (rng.chance(0.1)) {
          length = g * rng.between(1, 4);
          offset = rng.below(Math.max(1, roundUp(f.size, g) / g)) * g;
        } else {
          offset = this.pickOffset(rng, f.size);
          length = rng.logUniform(this.o.maxIo);
        }
        const v = rng.below(4);
        return { n, kind, file, offset, length, via: v < 2 ? 'fd' : v === 2 ? 'fresh' : 'direct' };
      }
      case 'truncate': {
        const r = rng.below(100);
        let size: number;
        if (r < 45) size = rng.below(f.size + 1);
        else if (r < 90) size = f.size + rng.between(1, 2 * MiB);
        else if (r < 95) size = 0;
        else size = f.size;
        // Without shrinking, the same distance up instead of down.
        if (size < f.size && !this.o.shrink) size = 2 * f.size - size;
        const a = rng.below(100);
        if (a < 30) size = roundUp(size, SECTOR);
        else if (a < 45) size = roundUp(size, g);
        return { n, kind, file, size: Math.min(size, max), byPath: rng.chance(0.3) };
      }
      case 'sync':
        return { n, kind, file, dataOnly: rng.chance(0.5) };
      case 'reopen': {
        const direct = rng.chance(0.2);
        const truncate = rng.chance(0.03) && f.size > 0 && this.o.shrink;
        return { n, kind, file, direct, truncate };
      }
      case 'stat':
        return { n, kind, file, byPath: rng.chance(0.4) };
      case 'verify':
      case 'flush':
        return { n, kind, file };
    }
  }

  // -------------------------------------------------------------------------------------
  // Execution and checks

  private async execute(op: Op): Promise<void> {
    this.counts[op.kind]++;
    const f = this.files[op.file] as ModelFile;
    const w = this.worker!;
    switch (op.kind) {
      case 'write': {
        const data = writeData(op.seed, op.length, op.zeros);
        const r = await w.call({ op: 'write', file: f.name, offset: op.offset, data: data.toString('base64') });
        if (r.n !== op.length) throw new Finding(`short write: ${r.n} of ${op.length} bytes written`, f.name);
        f.write(op.offset, data);
        f.remember(op);
        this.bytesWritten += op.length;
        return;
      }
      case 'read':
        return this.checkedRead(f, op.offset, op.length, op.via);
      case 'truncate':
        await w.call({ op: 'truncate', file: f.name, size: op.size, byPath: op.byPath });
        f.truncate(op.size);
        f.remember(op);
        return;
      case 'sync':
        await w.call({ op: 'sync', file: f.name, dataOnly: op.dataOnly });
        return;
      case 'reopen':
        await w.call({ op: 'open', file: f.name, direct: op.direct, truncate: op.truncate });
        if (op.truncate) {
          f.truncate(0);
          f.remember(op);
        }
        return;
      case 'stat': {
        const r = await w.call({ op: 'stat', file: f.name, byPath: op.byPath });
        if (r.n !== f.size) throw new Finding(`stat says ${r.n} bytes, the model ${f.size}`, f.name);
        return;
      }
      case 'verify':
        return this.verifyWhole(f, 'read of the whole file');
      case 'flush': {
        const r = await flushCli(this.mount!, path.join(this.mnt!, f.name), cliEnv({}, this.home));
        if (r.code !== 0) throw new Finding(`blobdisk flush exited ${r.code}: ${r.stderr.trim()}`, f.name);
        return this.checkAzure(f);
      }
    }
  }

  private async checkedRead(f: ModelFile, offset: number, length: number, via: ReadVia): Promise<void> {
    const r = await this.worker!.call({ op: 'read', file: f.name, offset, length, via });
    const got = Buffer.from(r.data ?? '', 'base64');
    const want = f.slice(offset, length);
    this.bytesCompared += got.length;
    const at = firstDiff(got, want);
    if (at === undefined) return;
    const report = this.explain(f, offset, got, want, at, `read [${offset}, ${offset + length}) via ${via}`);
    throw new Finding(`${report}\n  ${await this.azureAt(f, offset + at, got.subarray(at, at + 16), want.subarray(at, at + 16))}`, f.name);
  }

  /** What the blob in Azure holds at `pos` right now (uploads may still be under way), to
   *  tell a wrong upload from a wrong read. */
  private async azureAt(f: ModelFile, pos: number, got: Buffer, want: Buffer): Promise<string> {
    try {
      const blob = this.container.getBlobClient(f.name);
      const stored = (await blob.getProperties()).contentLength ?? 0;
      if (pos >= stored) return `Azure right after: the blob is ${stored} bytes, it ends before that offset`;
      const there = await blob.downloadToBuffer(pos, Math.min(16, stored - pos));
      const same = (b: Buffer): boolean => b.subarray(0, there.length).equals(there);
      const verdict = same(want) ? 'the expected bytes' : same(got) ? 'the bytes the read returned' : 'neither';
      return `Azure right after: ${hex(there)} at that offset, ${verdict} (blob ${stored} bytes)`;
    } catch (e) {
      return `Azure right after: could not be asked (${e instanceof Error ? e.message : String(e)})`;
    }
  }

  /** Size by path and every byte, in pieces through handles opened for the purpose. */
  private async verifyWhole(f: ModelFile, why: string): Promise<void> {
    const st = await this.worker!.call({ op: 'stat', file: f.name, byPath: true });
    if (st.n !== f.size) throw new Finding(`${why}: stat says ${st.n} bytes, the model ${f.size}`, f.name);
    for (let at = 0; at < f.size; at += VERIFY_CHUNK) await this.checkedRead(f, at, VERIFY_CHUNK, 'fresh');
    // Nothing past the end either.
    await this.checkedRead(f, f.size, SECTOR, 'fresh');
  }

  /** The blob in Azure, by a direct SDK download, must hold exactly the model's bytes: a page
   *  blob whole pages (zeros after the logical size, which its metadata keeps when unaligned),
   *  a block blob exactly the file. */
  private async checkAzure(f: ModelFile): Promise<void> {
    this.azureChecks++;
    const blob = this.container.getBlobClient(f.name);
    const props = await blob.getProperties();
    const type = f.kind === 'page' ? 'PageBlob' : 'BlockBlob';
    const stored = props.contentLength ?? -1;
    const logical = props.metadata?.blobdisk_size;
    const wantStored = f.kind === 'page' ? roundUp(f.size, SECTOR) : f.size;
    const where = `in Azure (${type} ${f.name})`;
    if (props.blobType !== type) throw new Finding(`${where}: the blob is a ${props.blobType}`, f.name);
    if (stored !== wantStored) throw new Finding(`${where}: ${stored} bytes stored, the model needs ${wantStored} (logical size ${f.size}, metadata blobdisk_size ${logical ?? 'absent'})`, f.name);
    if (f.kind === 'page' && (logical !== undefined || f.size % SECTOR !== 0) && logical !== String(f.size)) {
      throw new Finding(`${where}: metadata blobdisk_size is ${logical ?? 'absent'}, the model's size ${f.size}`, f.name);
    }
    const got = stored > 0 ? await blob.downloadToBuffer() : Buffer.alloc(0);
    const want = Buffer.alloc(wantStored);
    f.bytes.copy(want, 0, 0, f.size);
    this.bytesCompared += got.length;
    const at = firstDiff(got, want);
    if (at !== undefined) throw new Finding(this.explain(f, 0, got, want, at, `SDK download of ${f.name} (${where})`), f.name);
  }

  /** Where a read differs from the model and which ops wrote the bytes on either side. */
  private explain(f: ModelFile, offset: number, got: Buffer, want: Buffer, at: number, what: string): string {
    const pos = offset + at;
    const n = Math.min(got.length, want.length);
    let last = at;
    let differing = 0;
    for (let i = at; i < n; i++) {
      if (got[i] === want[i]) continue;
      last = i;
      differing++;
    }
    const g = this.o.grainSize;
    const lines = [
      `${what} differs from the model at file offset ${pos} (0x${pos.toString(16)}; grain ${Math.floor(pos / g)} + ${pos % g}, sector offset ${pos % SECTOR})`,
      `  got      ${hex(got.subarray(at, at + 16))}`,
      `  expected ${hex(want.subarray(at, at + 16))}`,
      `  ${got.length} bytes came back, ${want.length} expected; ${differing} bytes differ, the last at file offset ${offset + last} ` +
        `(grain ${Math.floor((offset + last) / g)} + ${(offset + last) % g}); model size ${f.size}`,
      `  expected bytes: ${this.origin(f, pos)}`,
      `  bytes that came back: ${this.lookalike(f, pos, got.subarray(at, Math.min(at + 16, differingRun(got, want, at))))}`,
    ];
    return lines.join('\n');
  }

  /** The op the model's byte at `pos` comes from. */
  private origin(f: ModelFile, pos: number): string {
    for (let i = f.history.length - 1; i >= 0; i--) {
      const op = f.history[i] as Op;
      if (op.kind === 'write' && pos >= op.offset && pos < op.offset + op.length) return `from ${describeOp(op, this.files)}`;
      if ((op.kind === 'truncate' && op.size <= pos) || (op.kind === 'reopen' && op.truncate)) return `zeros, cut by ${describeOp(op, this.files)} and not written since`;
    }
    return 'zeros, never written (as far as the kept history goes)';
  }

  /** Which earlier write's data the bytes that came back look like (a stale or misplaced grain). */
  private lookalike(f: ModelFile, pos: number, got: Buffer): string {
    if (got.length === 0) return 'none (the read ended early)';
    if (got.every((b) => b === 0)) return 'zeros';
    for (let i = f.history.length - 1; i >= 0 && i >= f.history.length - 5000; i--) {
      const op = f.history[i] as Op;
      if (op.kind !== 'write' || op.zeros || pos < op.offset || pos + got.length > op.offset + op.length) continue;
      const data = writeData(op.seed, op.length, false).subarray(pos - op.offset, pos - op.offset + got.length);
      if (data.equals(got)) return `the data of ${describeOp(op, this.files)}${got.length < 4 ? ` (only ${got.length} bytes compared)` : ''}`;
    }
    for (const other of this.files) {
      if (other === f) continue;
      for (let i = other.history.length - 1; i >= 0 && i >= other.history.length - 2000; i--) {
        const op = other.history[i] as Op;
        if (op.kind !== 'write' || op.zeros || pos < op.offset || pos + got.length > op.offset + op.length) continue;
        const data = writeData(op.seed, op.length, false).subarray(pos - op.offset, pos - op.offset + got.length);
        if (data.equals(got)) return `the data of ${describeOp(op, this.files)} (another file, same offset)`;
      }
    }
    return 'no earlier write to this offset of this file or any other';
  }

  private failure(e: unknown): FsxFailure {
    const o = this.o;
    const finding = e instanceof Finding ? e : undefined;
    const message = e instanceof Error ? e.message : String(e);
    const repro = [
      `npm run soak -- --seed ${o.seed} --ops ${this.opNumber}`,
      o.files !== FSX_DEFAULTS.files ? `--files ${o.files}` : '',
      o.remountEvery !== FSX_DEFAULTS.remountEvery ? `--remount-every ${o.remountEvery}` : '',
      o.coldEvery !== FSX_DEFAULTS.coldEvery ? `--cold-every ${o.coldEvery}` : '',
      o.grainSize !== FSX_DEFAULTS.grainSize ? `--grain-size ${o.grainSize}` : '',
      o.cacheSize !== FSX_DEFAULTS.cacheSize ? `--cache-size ${o.cacheSize}` : '',
      o.maxFileSize !== FSX_DEFAULTS.maxFileSize ? `--max-file-size ${o.maxFileSize}` : '',
      o.maxIo !== FSX_DEFAULTS.maxIo ? `--max-io ${o.maxIo}` : '',
      o.only !== undefined ? `--only ${o.only.join(',')}` : '',
      o.shrink ? '' : '--no-shrink',
      o.writeBackDelays.join(',') !== FSX_DEFAULTS.writeBackDelays.join(',') ? `--write-back-delays ${o.writeBackDelays.join(',')}` : '',
      '--trace',
    ].filter((s) => s !== '');
    const mountLog = this.mount?.stderr().trim().split('\n').slice(-20).join('\n    ') ?? '';
    const report = [
      `fsx FAILED: seed ${o.seed}, op #${this.opNumber} of ${o.ops}${finding?.file !== undefined ? `, file ${finding.file}` : ''}`,
      message.replace(/^/gm, '  '),
      `  mount #${this.mounts}: ${this.describeMount()}`,
      `  last ${this.lastOps.length} ops (oldest first):`,
      ...this.lastOps.map((l) => `    ${l}`),
      ...(mountLog !== '' ? ['  mount log (last lines):', `    ${mountLog}`] : []),
      `  replay: ${repro.join(' ')}`,
    ];
    return new FsxFailure(report.join('\n'), o.seed, this.opNumber);
  }
}

/** Runs `options.ops` random ops on fresh files in `options.container`. Mounts, unmounts and
 *  remounts on its own (never leaving a mount behind); resolves with a summary, or rejects
 *  with an FsxFailure whose message is the whole report. */
export async function runFsx(options: FsxOptions): Promise<FsxSummary> {
  return new Run(options).run();
}

/** A seed from the system's randomness, for runs that were not given one. */
export function randomSeed(): number {
  return crypto.randomBytes(4).readUInt32LE(0);
}
