/* `blobdisk mount --daemon`: the mount runs in a detached child (its own session, output
 * appended to a log file) and the command returns once the kernel serves the mount, with
 * exit status 0, or with the child's own one-line error and status 1 when it could not
 * mount. This is what `mount -t fuse.blobdisk` (fstab) and a Type=forking systemd unit
 * wait for. The child writes the pid file once mounted and removes it when it ends. */

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { UsageError } from '../errors';
import { Io, say } from './io';
import { splitSecrets } from './secrets';

/** Set in the child's environment: it must mount in the foreground and report to the parent. */
export const DAEMON_CHILD_ENV = 'BLOBDISK_DAEMON_CHILD';

const CLI = path.resolve(__dirname, '..', '..', '..', 'bin', 'blobdisk');

/** Node's flags for a mount process, also on bin/blobdisk's first line. V8's young
 *  generation grows to 32 MiB under the garbage of a mount's requests (a boot-style
 *  trace's 1,500 GETs took it there) and keeps its pages; at 8 MiB (two semi-spaces of
 *  4) the mount's peak RSS through the benchmark fell by 15–20 MiB, with nothing else
 *  changed and no request slower. */
export const MOUNT_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=4'];

/** How long the parent waits for the child to mount (the embedded Azurite starts first). */
const READY_TIMEOUT_MS = 120_000;

export interface RunSettings {
  readonly daemon: boolean;
  readonly logFile: string | undefined;
  readonly pidFile: string | undefined;
}

/** The message a daemon child sends its parent. */
type ChildMessage = { readonly ready: string };

export function isDaemonChild(env: NodeJS.ProcessEnv): boolean {
  return env[DAEMON_CHILD_ENV] === '1' && typeof process.send === 'function';
}

/** In the daemon child, once mounted: writes the pid file and tells the parent `line`. */
export async function reportReady(run: RunSettings, line: string): Promise<void> {
  if (run.pidFile !== undefined) await fsp.writeFile(run.pidFile, `${process.pid}\n`, { mode: 0o644 });
  if (typeof process.send !== 'function') return;
  const message: ChildMessage = { ready: line };
  await new Promise<void>((resolve) => process.send?.(message, undefined, {}, () => resolve()));
  process.disconnect?.();
}

/** In the daemon child, when the mount has ended. */
export async function removePidFile(run: RunSettings): Promise<void> {
  if (run.pidFile !== undefined) await fsp.rm(run.pidFile, { force: true });
}

/** The last line the child said (blobdisk: ...) in the log since `from`. */
async function lastSaid(logFile: string, from: number): Promise<string | undefined> {
  const text = (await fsp.readFile(logFile, 'utf8').catch(() => '')).slice(from);
  return text
    .split('\n')
    .filter((l) => l.startsWith('blobdisk: '))
    .pop()
    ?.slice('blobdisk: '.length);
}

/** Starts `blobdisk <argv>` without --daemon as a detached child and waits until it has
 *  mounted (0) or failed (1, its error said here). */
export async function detach(argv: readonly string[], logFile: string, io: Io): Promise<number> {
  await fsp.mkdir(path.dirname(logFile), { recursive: true, mode: 0o700 });
  let log: number;
  try {
    log = fs.openSync(logFile, 'a', 0o600);
  } catch (e) {
    throw new UsageError(`cannot write the log file ${logFile} (${(e as NodeJS.ErrnoException).code ?? 'error'}); give --log-file a path you can write`);
  }
  const from = fs.fstatSync(log).size;
  // Secrets travel in the child's environment, never on its command line.
  const { args, env } = splitSecrets(argv.filter((a) => a !== '--daemon' && !a.startsWith('--daemon=')));
  const child = spawn(process.execPath, [...MOUNT_NODE_FLAGS, CLI, ...args], {
    detached: true,
    stdio: ['ignore', log, log, 'ipc'],
    env: { ...io.env, ...env, [DAEMON_CHILD_ENV]: '1' },
  });
  fs.closeSync(log);
  const outcome = await new Promise<{ ready: string } | { exit: number | null } | 'timeout'>((resolve) => {
    const timer = setTimeout(() => resolve('timeout'), READY_TIMEOUT_MS);
    child.once('message', (m: ChildMessage) => {
      clearTimeout(timer);
      resolve({ ready: m.ready });
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ exit: code });
    });
  });
  if (typeof outcome === 'object' && 'ready' in outcome) {
    child.unref();
    if (child.connected) child.disconnect();
    say(io, `${outcome.ready}; running as pid ${child.pid}, logging to ${logFile}`);
    return 0;
  }
  if (outcome === 'timeout') {
    child.kill('SIGTERM');
    say(io, `the mount was not ready within ${READY_TIMEOUT_MS / 1000} s; see ${logFile}`);
    return 1;
  }
  say(io, (await lastSaid(logFile, from)) ?? `the mount exited with code ${outcome.exit} before it was ready; see ${logFile}`);
  return outcome.exit !== null && outcome.exit !== 0 ? outcome.exit : 1;
}
