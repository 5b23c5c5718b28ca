/* Helpers for end-to-end tests that drive a real FUSE mount. The mount always runs in a
 * child process (`node bin/blobdisk mount ...`): a FUSE callback runs on the event loop of
 * the mounting process, so the test process only ever touches the mounted path through
 * other child processes (sha256sum, cp, dd, ls ...), never with fs calls of its own.
 * Every mount started here is tracked, so `stopAllMounts()` in afterAll clears whatever a
 * failing test left behind (SIGTERM, then umount as root or fusermount3 -u, then lazily). */

import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fsp from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { ContainerClient } from '@azure/storage-blob';
import { unmountCommands } from '../../lib/fuse/clear';
import type { MountStatus } from '../../lib/mount';

/** The repository root (this file runs from test/support, or compiled from dist/test/support). */
export const ROOT = ((): string => {
  const up = path.resolve(__dirname, '..', '..');
  return path.basename(up) === 'dist' ? path.dirname(up) : up;
})();
export const CLI = path.join(ROOT, 'bin', 'blobdisk');

const READY = 'blobdisk: mounted ';
const DEFAULT_READY_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 60_000;

export interface RunResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
  /** True when the command was killed because it ran past its timeout. */
  readonly timedOut: boolean;
}

export interface RunOptions {
  readonly env?: NodeJS.ProcessEnv;
  readonly cwd?: string;
  /** Kill (SIGTERM, then SIGKILL 10 s later) after this long; default 120 s. */
  readonly timeoutMs?: number;
  /** Written to the child's stdin, which is then closed. */
  readonly input?: string | Buffer;
}

/** Runs `cmd args` as an asynchronous child process and collects its output. Never rejects
 *  for a non-zero exit: the caller looks at `code`. */
export function sh(cmd: string, args: readonly string[] = [], options: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: options.cwd ?? ROOT,
      env: options.env ?? process.env,
      stdio: [options.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    child.stdout?.on('data', (d: Buffer) => out.push(d));
    child.stderr?.on('data', (d: Buffer) => err.push(d));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGTERM');
      setTimeout(() => child.kill('SIGKILL'), 10_000).unref();
    }, options.timeoutMs ?? 120_000);
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8'), timedOut });
    });
    if (options.input !== undefined) child.stdin?.end(options.input);
  });
}

/** Environment for a blobdisk child: no credentials from the caller's environment, and a
 *  private BLOBDISK_HOME so nothing lands in the real home directory. */
export function cliEnv(extra: NodeJS.ProcessEnv = {}, home?: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  delete env.AZURE_STORAGE_CONNECTION_STRING;
  if (home !== undefined) env.BLOBDISK_HOME = home;
  return { ...env, ...extra };
}

/** Runs `node bin/blobdisk ...args` to completion (for status, unmount and refused mounts). */
export function runCli(args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  return sh(process.execPath, [CLI, ...args], { ...options, env: options.env ?? cliEnv() });
}

/** Non-empty lines of a command's output. */
export function lines(text: string): string[] {
  return text.split('\n').filter((l) => l.trim() !== '');
}

// ---------------------------------------------------------------------------------------
// Temporary directories

const tempDirs = new Set<string>();

/** A fresh directory under the system temp dir, removed by removeTempDirs(). */
export async function makeTempDir(prefix = 'blobdisk-e2e-'): Promise<string> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), prefix));
  tempDirs.add(dir);
  return dir;
}

/** A new, empty mountpoint `mnt` in a fresh temp directory. makeTempDir's directories are
 *  0700: with `searchable` the parent is opened so other users (libvirt-qemu, nobody) can
 *  reach a mount made there with --allow-other. */
export async function newMountpoint(prefix = 'blobdisk-mnt-', searchable = false): Promise<string> {
  const dir = await makeTempDir(prefix);
  if (searchable) await fsp.chmod(dir, 0o755);
  const mnt = path.join(dir, 'mnt');
  await fsp.mkdir(mnt);
  return mnt;
}

/** Removes the directories made by makeTempDir, but never one that still holds a mount
 *  (a recursive removal would walk into it). */
export async function removeTempDirs(): Promise<void> {
  const mounts = await mountedPaths();
  for (const dir of [...tempDirs]) {
    const busy = [...mounts].some((m) => m === dir || m.startsWith(`${dir}/`));
    if (busy) continue;
    tempDirs.delete(dir);
    await fsp.rm(dir, { recursive: true, force: true }).catch(() => undefined);
  }
}

// ---------------------------------------------------------------------------------------
// Mount table and processes

/** Mount points listed in /proc/mounts (octal escapes decoded). */
export async function mountedPaths(): Promise<Set<string>> {
  const text = await fsp.readFile('/proc/mounts', 'utf8');
  const out = new Set<string>();
  for (const line of text.split('\n')) {
    const field = line.split(' ')[1];
    if (field !== undefined) out.add(field.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))));
  }
  return out;
}

export async function isMounted(mnt: string): Promise<boolean> {
  return (await mountedPaths()).has(path.resolve(mnt));
}

/** Processes (other than this one) whose command line contains `text`. */
export async function processesMentioning(text: string): Promise<{ pid: number; cmdline: string }[]> {
  const out: { pid: number; cmdline: string }[] = [];
  for (const entry of await fsp.readdir('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    const cmdline = await fsp.readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    const joined = cmdline.split('\0').join(' ');
    if (joined.includes(text)) out.push({ pid: Number(entry), cmdline: joined });
  }
  return out;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** `promise`'s value, or `fallback` after `ms` (the timer never keeps the process alive). */
export function within<T, F>(promise: Promise<T>, ms: number, fallback: F): Promise<T | F> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<F>((r) => {
    timer = setTimeout(() => r(fallback), ms);
    timer.unref();
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/** Polls `check` until it returns true or `timeoutMs` passes; returns the last answer. */
export async function waitFor(check: () => Promise<boolean>, timeoutMs: number, intervalMs = 200): Promise<boolean> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return true;
    if (Date.now() > until) return false;
    await sleep(intervalMs);
  }
}

/** A TCP port on 127.0.0.1 that nothing listens on (bound, then closed again). */
export async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === 'string') throw new Error('no port');
  return address.port;
}

/** Makes sure nothing is mounted at `mnt` any more: umount (root) or fusermount3 -u, then
 *  lazily (libfuse 3's commands, as `blobdisk unmount` uses them for a dead mount). */
export async function forceUnmount(mnt: string): Promise<void> {
  for (const [cmd, args] of unmountCommands(mnt)) {
    if (!(await isMounted(mnt))) return;
    await sh(cmd, args, { timeoutMs: 20_000 });
  }
}

// ---------------------------------------------------------------------------------------
// Mounts

export interface StartMountOptions {
  /** Mountpoint to use; default a new empty temp directory. */
  readonly mnt?: string;
  readonly env?: NodeJS.ProcessEnv;
  readonly readyTimeoutMs?: number;
  /** Called synchronously in the same tick the ready line is read (e.g. to signal the
   *  process as early as a supervisor could). */
  readonly onReady?: (child: ChildProcess) => void;
}

export interface StopResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stderr: string;
  /** Whether the mount process ended on its own after SIGTERM (not SIGKILL, no fusermount). */
  readonly clean: boolean;
}

export interface RunningMount {
  readonly mnt: string;
  readonly child: ChildProcess;
  stderr(): string;
  /** `blobdisk status <mnt> --json`, run as a child process. */
  status(): Promise<MountStatus>;
  /** Resolves when the mount process has exited (by whatever means). */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGTERM, wait for the exit, then clear a leftover mount. Idempotent. */
  stop(): Promise<StopResult>;
}

const running = new Set<RunningMount>();

/** Spawns `node bin/blobdisk mount <mnt> ...args` and resolves once it prints its ready line.
 *  Rejects (after cleaning up) with its stderr when it exits early or is not ready in time. */
export async function startMount(args: readonly string[], options: StartMountOptions = {}): Promise<RunningMount> {
  const mnt = options.mnt ?? path.join(await makeTempDir('blobdisk-mnt-'), 'mnt');
  if (options.mnt === undefined) await fsp.mkdir(mnt);
  const env = options.env ?? cliEnv({}, await makeTempDir('blobdisk-home-'));
  const child = spawn(process.execPath, [CLI, 'mount', mnt, ...args], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  let out = '';
  child.stderr?.setEncoding('utf8');
  child.stdout?.setEncoding('utf8');
  child.stderr?.on('data', (d: string) => (err += d));
  child.stdout?.on('data', (d: string) => (out += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });

  let stopping: Promise<StopResult> | undefined;
  const handle: RunningMount = {
    mnt,
    child,
    stderr: () => err + (out ? `\n[stdout]\n${out}` : ''),
    async status() {
      const r = await runCli(['status', mnt, '--json'], { env, timeoutMs: 30_000 });
      if (r.code !== 0) throw new Error(`blobdisk status ${mnt} failed (${r.code}): ${r.stderr}`);
      return JSON.parse(r.stdout) as MountStatus;
    },
    exited,
    stop() {
      stopping ??= (async () => {
        let clean = true;
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
        const ended = await within(exited.then(() => true), STOP_TIMEOUT_MS, false);
        if (!ended) {
          clean = false;
          child.kill('SIGKILL');
          await within(exited, 10_000, undefined);
        }
        if (await isMounted(mnt)) {
          clean = false;
          await forceUnmount(mnt);
        }
        running.delete(handle);
        const { code, signal } = await within(exited, 1000, { code: null, signal: null });
        return { code, signal, stderr: err, clean };
      })();
      return stopping;
    },
  };
  running.add(handle);

  const timeoutMs = options.readyTimeoutMs ?? DEFAULT_READY_TIMEOUT_MS;
  const ready = await new Promise<'ready' | 'exited' | 'timeout'>((resolve) => {
    const timer = setTimeout(() => finish('timeout'), timeoutMs);
    const onData = (): void => {
      if (!err.split('\n').some((l) => l.startsWith(READY))) return;
      options.onReady?.(child);
      finish('ready');
    };
    const onExit = (): void => finish('exited');
    const finish = (how: 'ready' | 'exited' | 'timeout'): void => {
      clearTimeout(timer);
      child.stderr?.off('data', onData);
      child.off('exit', onExit);
      resolve(how);
    };
    child.stderr?.on('data', onData);
    child.once('exit', onExit);
    onData();
  });
  if (ready !== 'ready') {
    const { code } = await handle.stop();
    const why = ready === 'timeout' ? `was not ready within ${timeoutMs / 1000} s` : `exited with code ${code} before it was ready`;
    throw new Error(`blobdisk mount ${mnt} ${why}; stderr:\n${err}${out ? `\nstdout:\n${out}` : ''}`);
  }
  return handle;
}

/** For a long run outside jest (the soaks): on the first SIGINT or SIGTERM, stops every mount,
 *  then `stop()` (Azurite), removes the temp dirs and exits 130; a second signal waits for
 *  that (leaving a mount behind is worse). Returns the same cleanup for the normal end, which
 *  does nothing once a signal ran it. */
export function cleanupOnSignals(say: (line: string) => void, stop: () => Promise<void>): () => Promise<void> {
  let ran: Promise<void> | undefined;
  const cleanup = (): Promise<void> =>
    (ran ??= (async () => {
      await stopAllMounts();
      await stop();
      await removeTempDirs();
    })());
  const onSignal = (signal: NodeJS.Signals): void => {
    if (ran !== undefined) return;
    say(`${signal}: unmounting and stopping Azurite`);
    void cleanup().finally(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  return cleanup;
}

/** Stops every mount started by startMount that is still running (for afterAll/afterEach). */
export async function stopAllMounts(): Promise<void> {
  await Promise.all([...running].map((m) => m.stop()));
}

// ---------------------------------------------------------------------------------------
// Files on the local disk and through the mount (always via child processes)

/** SHA-256 (hex) of a file, computed by `sha256sum` in a child process. */
export async function sha256OfFile(file: string): Promise<string> {
  const r = await sh('sha256sum', ['--', file], { timeoutMs: 300_000 });
  if (r.code !== 0) throw new Error(`sha256sum ${file} failed (${r.code}): ${r.stderr}`);
  const hex = r.stdout.split(/\s/)[0] ?? '';
  if (!/^[0-9a-f]{64}$/.test(hex)) throw new Error(`sha256sum ${file} printed ${JSON.stringify(r.stdout)}`);
  return hex;
}

export function sha256(data: Buffer): string {
  return crypto.createHash('sha256').update(data).digest('hex');
}

/** `stat -c FORMAT file` in a child process, trimmed. */
export async function statOf(file: string, format: string): Promise<string> {
  const r = await sh('stat', ['-c', format, '--', file]);
  if (r.code !== 0) throw new Error(`stat ${file} failed (${r.code}): ${r.stderr}`);
  return r.stdout.trim();
}

/** Bytes [offset, offset + length) of a file, read by `dd` in a child process. */
export async function ddRange(file: string, offset: number, length: number, outFile: string): Promise<void> {
  const r = await sh('dd', [`if=${file}`, `of=${outFile}`, 'bs=65536', `skip=${offset}`, `count=${length}`, 'iflag=skip_bytes,count_bytes', 'status=none']);
  if (r.code !== 0) throw new Error(`dd of ${file} failed (${r.code}): ${r.stderr}`);
}

// ---------------------------------------------------------------------------------------
// Test blobs, uploaded directly with the SDK

const MAX_PUT_PAGE = 4 * 1024 * 1024;

export interface PageRangeData {
  /** 512-aligned offset. */
  readonly offset: number;
  /** Length a multiple of 512. */
  readonly data: Buffer;
}

/** Creates (or replaces) a sparse page blob of `size` bytes holding only `ranges`. */
export async function uploadPageBlob(
  container: ContainerClient,
  name: string,
  size: number,
  ranges: readonly PageRangeData[] = [],
  metadata?: Record<string, string>,
): Promise<void> {
  const blob = container.getPageBlobClient(name);
  await blob.create(size, metadata ? { metadata } : {});
  for (const { offset, data } of ranges) {
    for (let at = 0; at < data.length; at += MAX_PUT_PAGE) {
      const piece = data.subarray(at, Math.min(data.length, at + MAX_PUT_PAGE));
      await blob.uploadPages(piece, offset + at, piece.length);
    }
  }
}

/** Creates (or replaces) a block blob from blocks staged one by one (each block as given,
 *  any size) and committed in order. Returns the blob's whole content. */
export async function uploadBlockBlob(
  container: ContainerClient,
  name: string,
  blocks: readonly Buffer[],
  metadata?: Record<string, string>,
): Promise<Buffer> {
  const blob = container.getBlockBlobClient(name);
  const ids: string[] = [];
  for (const [i, block] of blocks.entries()) {
    const id = Buffer.from(`block-${String(i).padStart(6, '0')}`).toString('base64');
    await blob.stageBlock(id, block, block.length);
    ids.push(id);
  }
  await blob.commitBlockList(ids, metadata ? { metadata } : {});
  return Buffer.concat(blocks);
}

/** An empty-directory marker blob (hdi_isfolder=true, the blobfuse2/ADLS convention). */
export async function uploadFolderMarker(container: ContainerClient, name: string): Promise<void> {
  await container.getBlockBlobClient(name).upload('', 0, { metadata: { hdi_isfolder: 'true' } });
}

/** SHA-256 of a blob (its first `length` bytes if given) by a direct streaming SDK download. */
export async function sdkSha256(container: ContainerClient, name: string, length?: number): Promise<string> {
  const response = await container.getBlobClient(name).download(0, length);
  const body = response.readableStreamBody;
  if (!body) throw new Error(`download of ${name} returned no body`);
  const hash = crypto.createHash('sha256');
  for await (const chunk of body) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Bytes [offset, offset + length) of a blob by a direct SDK ranged download. */
export async function sdkRange(container: ContainerClient, name: string, offset: number, length: number): Promise<Buffer> {
  return container.getBlobClient(name).downloadToBuffer(offset, length);
}

/** Random bytes (incompressible, so any mix-up of grains shows). */
export function randomData(length: number): Buffer {
  return crypto.randomBytes(length);
}
