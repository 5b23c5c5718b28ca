/* Helpers shared by the benchmark: child processes, timed sequential reads, the page
 * cache, CPU accounting and medians. The benchmark process never mounts anything itself:
 * every mount and every reader is a child process driven asynchronously, so no FUSE
 * request ever waits on this process's event loop. */

import { spawn, type ChildProcess } from 'node:child_process';
import fsp from 'node:fs/promises';
import { unmountCommands } from '../lib/fuse/clear';

export const MiB = 1024 * 1024;
/** Throughput is reported in MB/s of 10^6 bytes, as dd and fio print it. */
export const MB = 1e6;

export interface RunResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
  /** Wall time from spawn to exit. */
  readonly ms: number;
}

export interface RunOptions {
  readonly timeoutMs?: number;
  readonly env?: NodeJS.ProcessEnv;
  readonly cwd?: string;
}

/** Runs a command to its end (killed after the timeout) and times it. */
export function run(cmd: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: options.env ?? process.env, cwd: options.cwd });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    let done = false;
    const finish = (code: number | null, signal: NodeJS.Signals | null): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, ms: Number(process.hrtime.bigint() - started) / 1e6 });
    };
    const timer = setTimeout(() => {
      // A process the command started (fio's jobs) may hold its output open, stuck in a
      // request a mount never answers: then the run ends 5 s after the command itself.
      const later = (code: number | null, signal: NodeJS.Signals | null): void => void setTimeout(() => finish(code, signal), 5000);
      if (child.exitCode !== null || child.signalCode !== null) later(child.exitCode, child.signalCode);
      else child.once('exit', later);
      child.kill('SIGKILL');
    }, options.timeoutMs ?? 300_000);
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`${cmd} could not be started: ${e.message}`));
    });
    child.once('close', finish);
  });
}

/** Runs a command that must succeed; throws with its stderr otherwise. */
export async function runOk(cmd: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const r = await run(cmd, args, options);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.signal ?? `exit ${r.code}`}): ${r.stderr.trim().slice(-500)}`);
  return r;
}

export interface ReadResult {
  readonly seconds: number;
  readonly mbps: number;
  /** CPU seconds of the reader process itself (dd: mostly the kernel's FUSE side). */
  readonly readerCpu?: number;
}

/** Reads `file` start to end with dd (1 MiB reads) in a child; checks the byte count. The
 *  time is dd's own, from its first read to its last: the spawn of the shell and dd from
 *  this process (which holds the benchmark's data, gigabytes) took 10–40 ms, a fifth of a
 *  warm read. A shell around dd reports dd's CPU time (its children's utime + stime from
 *  /proc after the wait). */
export async function timedRead(file: string, expectBytes: number): Promise<ReadResult> {
  const script = 'dd if="$1" of=/dev/null bs=1M || exit 1; read -r stat < /proc/$$/stat; echo "$stat"';
  const r = await runOk('sh', ['-c', script, 'sh', file], { timeoutMs: 600_000 });
  const m = /^(\d+) bytes/m.exec(r.stderr);
  if (!m || Number(m[1]) !== expectBytes) throw new Error(`dd read ${m?.[1] ?? '?'} bytes of ${file}, expected ${expectBytes}`);
  // cutime and cstime are fields 16 and 17; counted from the field after the ")".
  const fields = r.stdout.slice(r.stdout.lastIndexOf(')') + 2).trim().split(' ');
  const readerCpu = (Number(fields[13] ?? 0) + Number(fields[14] ?? 0)) / CLOCK_TICKS;
  const own = /copied, ([\d.]+) s/.exec(r.stderr);
  const seconds = own ? Number(own[1]) : r.ms / 1000;
  return { seconds, mbps: expectBytes / MB / seconds, readerCpu };
}

/** SHA-256 of a file, read by a child (sha256sum). */
export async function sha256File(file: string): Promise<string> {
  const r = await runOk('sha256sum', [file], { timeoutMs: 600_000 });
  return r.stdout.split(/\s/)[0] ?? '';
}

/** Writes dirty pages back and empties the kernel page cache (root only). */
export async function dropCaches(): Promise<void> {
  await runOk('sync', []);
  await fsp.writeFile('/proc/sys/vm/drop_caches', '3');
}

/** User + system CPU seconds a process has used so far (0 when it is gone). */
export async function cpuSeconds(pid: number): Promise<number> {
  const text = await fsp.readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  // Fields after the ")" closing the command name: state is field 3, utime 14, stime 15.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[11] ?? 0) + Number(fields[12] ?? 0);
  return ticks / CLOCK_TICKS;
}
/** sysconf(_SC_CLK_TCK); 100 on every Linux kind this runs on. */
const CLOCK_TICKS = 100;

/** Busy CPU seconds of the whole machine so far (all cores; idle and iowait excluded). */
export async function machineBusySeconds(): Promise<number> {
  const text = await fsp.readFile('/proc/stat', 'utf8');
  const fields = (text.split('\n')[0] ?? '').trim().split(/\s+/).slice(1).map(Number);
  const total = fields.slice(0, 8).reduce((a, b) => a + b, 0);
  const idle = (fields[3] ?? 0) + (fields[4] ?? 0);
  return (total - idle) / CLOCK_TICKS;
}

export interface QuietResult {
  /** Busy cores of the machine in the last sample window before we went on. */
  readonly busyCores: number;
  readonly waitedSeconds: number;
  readonly quiet: boolean;
}

/** Waits until the machine is nearly idle (other work on it would skew a measurement):
 *  busy below `maxBusyCores` over a `windowMs` sample, for at most `maxWaitMs`. */
export async function waitQuiet(maxBusyCores = 0.25, windowMs = 500, maxWaitMs = 20_000): Promise<QuietResult> {
  const started = Date.now();
  for (;;) {
    const before = await machineBusySeconds();
    await new Promise((resolve) => setTimeout(resolve, windowMs));
    const busyCores = ((await machineBusySeconds()) - before) / (windowMs / 1000);
    const waitedSeconds = (Date.now() - started) / 1000;
    if (busyCores <= maxBusyCores) return { busyCores, waitedSeconds, quiet: true };
    if (Date.now() - started >= maxWaitMs) return { busyCores, waitedSeconds, quiet: false };
  }
}

/** Sets the kernel read-ahead of the FUSE filesystem mounted at `mnt` (its backing device
 *  info, /sys/class/bdi/MAJOR:MINOR); the kernel gives FUSE mounts 128 KiB. Root only. */
export async function setFuseReadAhead(mnt: string, kib: number): Promise<void> {
  const dev = (await fsp.stat(mnt)).dev;
  const major = (dev >> 8) & 0xfff;
  const minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
  await fsp.writeFile(`/sys/class/bdi/${major}:${minor}/read_ahead_kb`, String(kib));
}

/** Mount points of this machine, from /proc/self/mountinfo. */
export async function mountedPaths(): Promise<Set<string>> {
  const text = await fsp.readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  const out = new Set<string>();
  for (const line of text.split('\n')) {
    const mnt = line.split(' ')[4];
    if (mnt !== undefined) out.add(mnt.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))));
  }
  return out;
}

/** Lazily unmounts `mnt` when it is still mounted (after a child died without unmounting). */
export async function ensureUnmounted(mnt: string): Promise<boolean> {
  if (!(await mountedPaths()).has(mnt)) return false;
  const [cmd, args] = unmountCommands(mnt)[1] ?? ['umount', ['-l', mnt]];
  await run(cmd, args);
  return true;
}

/** A long-running child (a mount) that says on stderr when it is ready. */
export class Daemon {
  private stderr = '';
  private exited: Promise<number | null>;
  private constructor(
    readonly name: string,
    private readonly child: ChildProcess,
  ) {
    child.stderr?.setEncoding('utf8').on('data', (d: string) => {
      this.stderr = (this.stderr + d).slice(-8000);
    });
    child.stdout?.resume();
    this.exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get output(): string {
    return this.stderr;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Spawns and resolves once stderr matches `ready`; kills the child when it does not in time. */
  static async start(name: string, cmd: string, args: readonly string[], ready: RegExp, env: NodeJS.ProcessEnv, timeoutMs = 60_000): Promise<Daemon> {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
    const daemon = new Daemon(name, child);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        finish();
        child.kill('SIGKILL');
        reject(new Error(`${name} was not ready within ${timeoutMs / 1000} s: ${daemon.stderr.trim().slice(-500)}`));
      }, timeoutMs);
      const onData = (): void => {
        if (ready.test(daemon.stderr)) {
          finish();
          resolve();
        }
      };
      const onExit = (code: number | null, signal: string | null): void => {
        finish();
        reject(new Error(`${name} exited before it was ready (${signal ?? `exit ${code}`}): ${daemon.stderr.trim().slice(-500)}`));
      };
      const onError = (e: Error): void => {
        finish();
        reject(new Error(`${name} could not be started: ${e.message}`));
      };
      const finish = (): void => {
        clearTimeout(timer);
        child.stderr?.off('data', onData);
        child.off('exit', onExit);
        child.off('error', onError);
      };
      child.stderr?.on('data', onData);
      child.once('exit', onExit);
      child.once('error', onError);
    });
    return daemon;
  }

  /** SIGTERM, wait for the exit (SIGKILL after the timeout); resolves with the exit code. */
  async stop(timeoutMs = 60_000): Promise<number | null> {
    if (this.running) this.child.kill('SIGTERM');
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), timeoutMs)));
    const first = await Promise.race([this.exited, late]);
    clearTimeout(timer);
    if (first !== 'late') return first;
    this.child.kill('SIGKILL');
    return this.exited;
  }
}

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? (s[mid] ?? NaN) : ((s[mid - 1] ?? NaN) + (s[mid] ?? NaN)) / 2;
}

export function round(x: number, digits = 2): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/** Formats rows as a plain text table with a header line. */
export function table(header: readonly string[], rows: readonly (readonly (string | number)[])[]): string {
  const cells = [header, ...rows].map((r) => r.map((c) => String(c)));
  const widths = header.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  const line = (r: readonly string[]): string => r.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join('  ');
  return [line(cells[0] ?? []), widths.map((w) => '-'.repeat(w)).join('  '), ...cells.slice(1).map(line)].join('\n');
}

/** Sizes as the CLI flags take them: 256K, 1M, 16M. */
export function sizeFlag(bytes: number): string {
  if (bytes % MiB === 0) return `${bytes / MiB}M`;
  if (bytes % 1024 === 0) return `${bytes / 1024}K`;
  return String(bytes);
}
