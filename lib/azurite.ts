/* Starts Azurite's blob service as a child process: the embedded default of `blobdisk mount`
 * and the Azure stand-in of the tests. The child runs under our own Node (process.execPath)
 * with a tiny wrapper that watches its stdin: that pipe closes when the parent dies by any
 * means (even kill -9), and the wrapper then stops Azurite with SIGTERM so it persists its
 * metadata (a SIGKILLed Azurite loses up to 5 s of it in disk mode). It runs in its own
 * process group so that a Ctrl-C meant for blobdisk does not stop it before blobdisk has
 * drained its dirty data into it. Without a fixed port it
 * listens on port 0 and reports the port the kernel chose, so there is no race for a port. */

import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import { isAlive } from './pid';

export interface AzuriteOptions {
  /** Data directory (disk mode). Ignored with `inMemory`. */
  readonly location?: string;
  readonly inMemory?: boolean;
  /** Listening address; default 127.0.0.1. */
  readonly host?: string;
  /** Listening port; default: a free port chosen by the kernel. */
  readonly port?: number;
  /** File for Azurite's debug log. */
  readonly debugLog?: string;
  /** How long to wait for it to listen; default 30 s. */
  readonly startTimeoutMs?: number;
  /** The account's key (base64); default the emulator's published one, which any local
   *  user knows: the embedded default passes its own (see embeddedAccountKey). */
  readonly accountKey?: string;
  /** Serve HTTPS with this certificate and key (PEM files), and accept Microsoft Entra ID
   *  bearer tokens (Azurite's basic OAuth: issuer, audience and lifetime are checked). */
  readonly tls?: { readonly cert: string; readonly key: string };
  /** Largest JavaScript heap of Azurite's process, in MiB (Node's default: about 4 GiB). An
   *  in-memory Azurite that gigabytes of blobs passed through spent its time collecting
   *  garbage near that limit. */
  readonly heapMiB?: number;
}

export interface RunningAzurite {
  /** Blob endpoint including the account, e.g. http://127.0.0.1:PORT/devstoreaccount1 */
  readonly endpoint: string;
  readonly connectionString: string;
  readonly port: number;
  readonly pid: number;
  readonly accountKey: string;
  /** SIGTERM, wait for the exit, SIGKILL after a timeout. Idempotent. */
  stop(): Promise<void>;
}

/** The emulator's well-known account and key (public, documented by Microsoft). */
export const AZURITE_ACCOUNT = 'devstoreaccount1';
export const AZURITE_KEY = 'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==';

const STOP_TIMEOUT_MS = 10_000;
const TAIL_BYTES = 2000;

/** Runs the Azurite entry (argv[1]) and stops it when our stdin (the parent's pipe) closes. */
const WRAPPER = `
const main = process.argv[1];
process.argv = [process.argv[0], main, ...process.argv.slice(2)];
let stopping = false;
const stop = () => {
  if (stopping) return;
  stopping = true;
  process.kill(process.pid, 'SIGTERM');
  setTimeout(() => process.exit(0), ${STOP_TIMEOUT_MS - 2000}).unref();
};
process.stdin.on('end', stop);
process.stdin.on('error', stop);
process.stdin.resume();
if (process.stdin.unref) process.stdin.unref();
require(main);
`;

function azuriteBlobMain(): string {
  const pkgPath = require.resolve('azurite/package.json');
  const pkg = require(pkgPath) as { bin?: Record<string, string> };
  const rel = pkg.bin?.['azurite-blob'];
  if (rel === undefined) throw new Error('the installed azurite package has no azurite-blob entry');
  return path.join(path.dirname(pkgPath), rel);
}

function connectionStringFor(endpoint: string, key: string): string {
  return `DefaultEndpointsProtocol=${endpoint.startsWith('https:') ? 'https' : 'http'};AccountName=${AZURITE_ACCOUNT};AccountKey=${key};BlobEndpoint=${endpoint};`;
}

/** The embedded Azurite's account key for the data in `location`: made at random the first
 *  time (64 bytes, as Azure's own keys) and kept beside the data, readable by its owner only,
 *  so no other local user can reach the blobs with the emulator's published key. */
export async function embeddedAccountKey(location: string): Promise<string> {
  await mkdir(location, { recursive: true, mode: 0o700 });
  const file = path.join(location, 'account-key');
  const kept = (await readFile(file, 'utf8').catch(() => '')).trim();
  if (/^[A-Za-z0-9+/]{86}==$/.test(kept)) return kept;
  const key = randomBytes(64).toString('base64');
  await writeFile(file, `${key}\n`, { mode: 0o600 });
  await chmod(file, 0o600);
  return key;
}

function tail(s: string): string {
  const t = s.length > TAIL_BYTES ? s.slice(-TAIL_BYTES) : s;
  return t.trim().replace(/\s*\n\s*/g, ' | ');
}

function waitForExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      child.off('exit', onExit);
      resolve(false);
    }, ms);
    const onExit = (): void => {
      clearTimeout(timer);
      resolve(true);
    };
    child.once('exit', onExit);
  });
}


/** One Azurite per data directory: an earlier one (say, of a mount that was killed) may
 *  still be saving its state; starting a second one on the same files would read them
 *  half-written. Waits for it to finish. */
async function waitForPreviousAzurite(pidFile: string, ms: number): Promise<void> {
  const pid = Number(await readFile(pidFile, 'utf8').catch(() => ''));
  if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid) return;
  const until = Date.now() + ms;
  while (isAlive(pid)) {
    if (Date.now() > until) throw new Error(`the Azurite data in ${path.dirname(pidFile)} is in use by process ${pid}; stop it or use another data directory`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Starts Azurite's blob service and resolves once it listens. */
export async function startAzurite(options: AzuriteOptions = {}): Promise<RunningAzurite> {
  const host = options.host ?? '127.0.0.1';
  const args = [
    '--blobHost', host,
    '--blobPort', String(options.port ?? 0),
    '--skipApiVersionCheck', '--loose', '--disableTelemetry', '--silent',
  ];
  if (options.inMemory === true) args.push('--inMemoryPersistence');
  else if (options.location !== undefined) args.push('--location', options.location);
  else throw new Error('startAzurite needs a data directory (location) or inMemory');
  if (options.debugLog !== undefined) args.push('--debug', options.debugLog);
  if (options.tls !== undefined) args.push('--cert', options.tls.cert, '--key', options.tls.key, '--oauth', 'basic');
  const key = options.accountKey ?? AZURITE_KEY;
  const pidFile = options.inMemory !== true && options.location !== undefined ? path.join(options.location, 'azurite.pid') : undefined;
  if (options.inMemory !== true && options.location !== undefined) await mkdir(options.location, { recursive: true });
  if (pidFile !== undefined) await waitForPreviousAzurite(pidFile, STOP_TIMEOUT_MS * 2);

  const heap = options.heapMiB === undefined ? [] : [`--max-old-space-size=${options.heapMiB}`];
  const child = spawn(process.execPath, [...heap, '-e', WRAPPER, azuriteBlobMain(), ...args], {
    stdio: ['pipe', 'pipe', 'pipe'],
    // Its own process group: Ctrl-C in the terminal must reach blobdisk only, which still
    // needs Azurite to drain dirty data before it stops it.
    detached: true,
    // Azurite writes stray files into its working directory; keep them with its data.
    cwd: options.inMemory === true ? process.cwd() : options.location,
    // Azurite serves exactly the accounts named here: the published key no longer works.
    env: { ...process.env, AZURITE_ACCOUNTS: `${AZURITE_ACCOUNT}:${key}` },
  });
  let out = '';
  let err = '';
  child.stdout?.setEncoding('utf8');
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (d: string) => {
    err = (err + d).slice(-TAIL_BYTES * 2);
  });

  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => {
      finish();
      child.kill('SIGKILL');
      reject(new Error(`Azurite did not start listening within ${(options.startTimeoutMs ?? 30_000) / 1000} s: ${tail(err || out)}`));
    }, options.startTimeoutMs ?? 30_000);
    const onData = (d: string): void => {
      out = (out + d).slice(-TAIL_BYTES * 2);
      const m = /successfully listens on https?:\/\/[^\s:]+:(\d+)/.exec(out);
      if (m?.[1] !== undefined) {
        finish();
        resolve(Number(m[1]));
      }
    };
    const onExit = (code: number | null, signal: string | null): void => {
      finish();
      reject(new Error(`Azurite exited before listening (${signal ?? `code ${code}`}): ${tail(err || out)}`));
    };
    const onError = (e: Error): void => {
      finish();
      reject(new Error(`Azurite could not be started: ${e.message}`));
    };
    const finish = (): void => {
      clearTimeout(timer);
      child.stdout?.off('data', onData);
      child.off('exit', onExit);
      child.off('error', onError);
    };
    child.stdout?.on('data', onData);
    child.once('exit', onExit);
    child.once('error', onError);
  });
  // Keep draining its output so it never blocks on a full pipe.
  child.stdout?.on('data', () => undefined);
  if (pidFile !== undefined && child.pid !== undefined) await writeFile(pidFile, String(child.pid));

  const endpoint = `${options.tls !== undefined ? 'https' : 'http'}://${host}:${port}/${AZURITE_ACCOUNT}`;
  let stopped: Promise<void> | undefined;
  return {
    endpoint,
    connectionString: connectionStringFor(endpoint, key),
    port,
    pid: child.pid ?? -1,
    accountKey: key,
    stop(): Promise<void> {
      stopped ??= (async () => {
        if (child.exitCode !== null || child.signalCode !== null) return;
        child.kill('SIGTERM');
        if (!(await waitForExit(child, STOP_TIMEOUT_MS))) {
          child.kill('SIGKILL');
          await waitForExit(child, STOP_TIMEOUT_MS);
        }
        child.stdin?.destroy();
        if (pidFile !== undefined) await rm(pidFile, { force: true });
      })();
      return stopped;
    },
  };
}
