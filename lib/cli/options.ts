/* Command-line flags become one frozen MountOptions (lib/config.ts) here and nowhere else.
 * Each layer receives its own slice of it through its constructor. */

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { AccessArgs, parseAccess } from './access';
import { AUTH_MODES, AuthMode, DEFAULTS, LOG_LEVELS, LogLevel, MountOptions, SyncMode } from '../config';
import { UsageError } from '../errors';
import { canonicalMountpoint } from '../control';
import { parseListenAddress } from '../prometheus';
import { Credentials, defaultEndpoint, sasProblem } from '../store/credentials';
import { formatSize, isPowerOfTwo, parseSize } from '../units';

/** Flags as yargs hands them over (strings where the user typed sizes). */
export interface MountArgs extends AccessArgs {
  mountpoint: string;
  connectionString?: string | undefined;
  account?: string | undefined;
  accountKey?: string | undefined;
  accountKeyFile?: string | undefined;
  auth?: string | undefined;
  sas?: string | undefined;
  endpoint?: string | undefined;
  container?: string | undefined;
  dataDir?: string | undefined;
  cacheDir?: string | undefined;
  cacheSize?: string | undefined;
  grainSize?: string | undefined;
  readAhead?: string | undefined;
  readOnly?: boolean | undefined;
  logLevel?: string | undefined;
  sync?: string | undefined;
  drainTimeout?: number | undefined;
  writeBackDelay?: number | undefined;
  checkpoints?: number | undefined;
  checkpointInterval?: string | undefined;
  dirCacheTime?: number | undefined;
  ioTimeout?: number | undefined;
  pageBlobPattern?: string[] | undefined;
  metricsAddr?: string | undefined;
  warmFrom?: string[] | undefined;
}

/** Where blobdisk keeps its cache and the embedded Azurite's data by default. */
/** --warm-from files (given several times, or comma-separated), resolved and readable. */
function warmFiles(given: readonly string[]): string[] {
  const files = given.flatMap((g) => g.split(',')).map((f) => f.trim()).filter((f) => f !== '').map((f) => path.resolve(f));
  for (const f of files) {
    try {
      fs.accessSync(f, fs.constants.R_OK);
    } catch {
      throw new UsageError(`--warm-from ${f}: cannot read it; give the file blobdisk handoff wrote on the other host`);
    }
  }
  return files;
}

export function defaultDataDir(env: NodeJS.ProcessEnv): string {
  if (env.BLOBDISK_HOME) return path.resolve(env.BLOBDISK_HOME);
  const base = env.XDG_DATA_HOME || path.join(env.HOME || os.homedir(), '.local', 'share');
  return path.join(base, 'blobdisk');
}

const CONTAINER_NAME = /^(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*$/;

export function isValidContainerName(name: string): boolean {
  return CONTAINER_NAME.test(name);
}

function size(flag: string, text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  const bytes = parseSize(text);
  if (bytes === undefined || bytes <= 0) {
    throw new UsageError(`--${flag} ${JSON.stringify(text)} is not a size; write it like 10G, 512M or 1048576`);
  }
  return bytes;
}

/** The account key of --account-key-file: the file's first line. */
function keyFromFile(file: string): string {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new UsageError(`cannot read --account-key-file ${file} (${(e as NodeJS.ErrnoException).code ?? 'error'}); give a file holding the account key`);
  }
  const key = text.split('\n')[0]?.trim() ?? '';
  if (key === '') throw new UsageError(`--account-key-file ${file} is empty; put the account key on its first line`);
  return key;
}

/** Credentials from the flags (or their BLOBDISK_* and --config forms), else from the Azure
 *  CLI's variables: AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT with
 *  AZURE_STORAGE_KEY, AZURE_STORAGE_SAS_TOKEN or AZURE_STORAGE_AUTH_MODE=login (Entra ID).
 *  Undefined: none at all. */
function credentials(args: MountArgs, env: NodeJS.ProcessEnv): Credentials | undefined {
  const given = args.account !== undefined || args.connectionString !== undefined;
  const fromEnv = !given && !env.AZURE_STORAGE_CONNECTION_STRING && env.AZURE_STORAGE_ACCOUNT ? env : undefined;
  const account = args.account ?? fromEnv?.AZURE_STORAGE_ACCOUNT;
  if (args.auth !== undefined && !AUTH_MODES.includes(args.auth as AuthMode)) {
    throw new UsageError(`--auth must be one of ${AUTH_MODES.join(', ')}`);
  }
  const auth = (args.auth as AuthMode | undefined) ?? (fromEnv?.AZURE_STORAGE_AUTH_MODE === 'login' ? 'entra' : undefined);
  if (args.accountKey !== undefined && args.accountKeyFile !== undefined) {
    throw new UsageError('give either --account-key or --account-key-file, not both');
  }
  if (auth === 'entra') {
    if (args.accountKey !== undefined || args.accountKeyFile !== undefined || args.sas !== undefined || args.connectionString !== undefined) {
      throw new UsageError('--auth entra signs in with Microsoft Entra ID; leave out --account-key, --account-key-file, --sas and --connection-string');
    }
    if (account === undefined) throw new UsageError('--auth entra needs the storage account: --account NAME (or AZURE_STORAGE_ACCOUNT)');
    checkAccountName(account, args.endpoint);
    return { kind: 'entra', account, endpoint: args.endpoint ?? defaultEndpoint(account) };
  }
  const accountKey = args.accountKey ?? (args.accountKeyFile !== undefined ? keyFromFile(args.accountKeyFile) : undefined) ?? (account !== undefined ? fromEnv?.AZURE_STORAGE_KEY || undefined : undefined);
  const sas = args.sas ?? (account !== undefined && accountKey === undefined ? fromEnv?.AZURE_STORAGE_SAS_TOKEN || undefined : undefined);
  let out: Credentials | undefined;
  if (account !== undefined) {
    if (args.connectionString !== undefined) {
      throw new UsageError('give either --connection-string or --account with --account-key/--sas, not both');
    }
    if ((accountKey === undefined) === (sas === undefined)) {
      throw new UsageError(
        fromEnv !== undefined
          ? 'AZURE_STORAGE_ACCOUNT needs exactly one of AZURE_STORAGE_KEY, AZURE_STORAGE_SAS_TOKEN or AZURE_STORAGE_AUTH_MODE=login'
          : '--account needs exactly one of --account-key, --account-key-file or --sas (or --auth entra)',
      );
    }
    checkAccountName(account, args.endpoint);
    const endpoint = args.endpoint ?? defaultEndpoint(account);
    out = accountKey !== undefined ? { kind: 'accountKey', account, accountKey, endpoint } : { kind: 'sas', account, sas: (sas ?? '').replace(/^\?/, ''), endpoint };
  } else if (accountKey !== undefined || sas !== undefined) {
    throw new UsageError('--account-key, --account-key-file and --sas need --account NAME');
  } else {
    const connectionString = args.connectionString ?? env.AZURE_STORAGE_CONNECTION_STRING;
    if (connectionString !== undefined && connectionString !== '') out = { kind: 'connectionString', connectionString };
  }
  const kind = out === undefined ? undefined : ({ connectionString: 'connection-string', accountKey: 'key', sas: 'sas', entra: 'entra' } as const)[out.kind];
  if (auth !== undefined && auth !== kind) {
    const what = { 'connection-string': '--connection-string (or AZURE_STORAGE_CONNECTION_STRING)', key: '--account with --account-key or --account-key-file', sas: '--account with --sas' }[auth];
    throw new UsageError(`--auth ${auth} needs ${what}`);
  }
  return out;
}

function checkAccountName(account: string, endpoint: string | undefined): void {
  if (!/^[a-z0-9]{3,24}$/.test(account) && endpoint === undefined) {
    throw new UsageError(`--account ${JSON.stringify(account)} is not a storage account name (3-24 lowercase letters and digits)`);
  }
}

/** The mounting user, the default owner of everything in the mount. */
const self = (): { uid: number; gid: number } => ({ uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 });

/** Validates flags into frozen MountOptions; throws UsageError with one line saying what to do. */
export function parseMountOptions(args: MountArgs, env: NodeJS.ProcessEnv = process.env): MountOptions {
  if (!args.mountpoint) throw new UsageError('give the mountpoint: blobdisk mount <mountpoint>');
  const grainSize = size('grain-size', args.grainSize, DEFAULTS.grainSize);
  if (!isPowerOfTwo(grainSize) || grainSize < DEFAULTS.minGrainSize || grainSize > DEFAULTS.maxGrainSize) {
    throw new UsageError(
      `--grain-size ${args.grainSize ?? grainSize} must be a power of two from ${formatSize(DEFAULTS.minGrainSize)} to ${formatSize(DEFAULTS.maxGrainSize)}, e.g. 1M`,
    );
  }
  const cacheSize = size('cache-size', args.cacheSize, DEFAULTS.cacheSize);
  const minCache = DEFAULTS.minCacheGrains * grainSize;
  if (cacheSize < minCache) {
    throw new UsageError(
      `--cache-size ${args.cacheSize} is smaller than ${DEFAULTS.minCacheGrains} grains (${formatSize(minCache)}); give at least ${formatSize(minCache)}`,
    );
  }
  const readAheadBytes = size('read-ahead', args.readAhead, DEFAULTS.readAheadGrains * grainSize);
  if (args.container !== undefined && !isValidContainerName(args.container)) {
    throw new UsageError(
      `--container ${JSON.stringify(args.container)} is not a container name (3-63 lowercase letters, digits and single hyphens)`,
    );
  }
  const logLevel = (args.logLevel ?? DEFAULTS.logLevel) as LogLevel;
  if (!LOG_LEVELS.includes(logLevel)) {
    throw new UsageError(`--log-level must be one of ${LOG_LEVELS.join(', ')}`);
  }
  const sync = (args.sync ?? DEFAULTS.sync) as SyncMode;
  if (sync !== 'local' && sync !== 'cloud') throw new UsageError('--sync must be local (fsync waits for the local disk) or cloud (fsync waits for Azure)');
  if (args.drainTimeout !== undefined && !(args.drainTimeout >= 0)) throw new UsageError('--drain-timeout takes seconds, e.g. 60');
  if (args.writeBackDelay !== undefined && !(args.writeBackDelay >= 0)) throw new UsageError('--write-back-delay takes seconds, e.g. 0.5');
  if (args.dirCacheTime !== undefined && !(args.dirCacheTime >= 0)) throw new UsageError('--dir-cache-time takes seconds, e.g. 5');
  if (args.ioTimeout !== undefined && !(args.ioTimeout >= 1)) throw new UsageError('--io-timeout takes seconds, at least 1, e.g. 30');
  if (args.checkpoints !== undefined && !(Number.isInteger(args.checkpoints) && args.checkpoints >= 0)) {
    throw new UsageError('--checkpoints takes how many checkpoints to keep per image, e.g. 24 (0: none)');
  }
  const checkpointIntervalMs = args.checkpointInterval !== undefined ? duration(args.checkpointInterval) : DEFAULTS.checkpointIntervalMs;
  if (checkpointIntervalMs === undefined) throw new UsageError(`--checkpoint-interval ${JSON.stringify(args.checkpointInterval)} is not a duration; give e.g. 30s, 5m, 1h or 0`);
  const patterns = args.pageBlobPattern ?? DEFAULTS.pageBlobPatterns;
  for (const p of patterns) {
    if (p === '' || p.includes('/')) throw new UsageError(`--page-blob-pattern ${JSON.stringify(p)} must be a file-name pattern like '*.img'`);
  }
  const dataDir = args.dataDir !== undefined ? path.resolve(args.dataDir) : defaultDataDir(env);
  const creds = credentials(args, env);
  const problem = creds?.kind === 'sas' ? sasProblem(creds.sas, args.readOnly ?? false) : undefined;
  if (problem !== undefined) throw new UsageError(problem);
  const options: MountOptions = {
    // As the kernel's mount table names it (a symlinked path would never be found there).
    mountpoint: canonicalMountpoint(args.mountpoint),
    credentials: creds,
    container: args.container,
    dataDir,
    cache: Object.freeze({
      dir: args.cacheDir !== undefined ? path.resolve(args.cacheDir) : path.join(dataDir, 'cache'),
      sizeBytes: cacheSize,
      grainSize,
    }),
    read: Object.freeze({
      readAheadGrains: Math.max(0, Math.floor(readAheadBytes / grainSize)),
      fetchConcurrency: DEFAULTS.fetchConcurrency,
      maxFetchBytes: Math.max(grainSize, DEFAULTS.maxFetchBytes),
    }),
    write: Object.freeze({
      sync,
      drainTimeoutMs: args.drainTimeout !== undefined ? args.drainTimeout * 1000 : DEFAULTS.drainTimeoutMs,
      dirtyWaitMs: DEFAULTS.dirtyWaitMs,
      writeBackDelayMs: args.writeBackDelay !== undefined ? args.writeBackDelay * 1000 : DEFAULTS.writeBackDelayMs,
      uploadConcurrency: DEFAULTS.uploadConcurrency,
      pageBlobPatterns: Object.freeze([...patterns]),
      checkpoints: args.checkpoints ?? DEFAULTS.checkpoints,
      checkpointIntervalMs,
    }),
    readOnly: args.readOnly ?? false,
    access: parseAccess(args, self()),
    logLevel,
    metricsAddr: args.metricsAddr !== undefined ? Object.freeze(parseListenAddress(args.metricsAddr)) : undefined,
    maxTries: DEFAULTS.maxTries,
    tryTimeoutMs: DEFAULTS.tryTimeoutMs,
    ioTimeoutMs: args.ioTimeout !== undefined ? args.ioTimeout * 1000 : DEFAULTS.ioTimeoutMs,
    attrTtlMs: args.dirCacheTime !== undefined ? args.dirCacheTime * 1000 : DEFAULTS.attrTtlMs,
    warmFrom: Object.freeze(warmFiles(args.warmFrom ?? [])),
  };
  return Object.freeze(options);
}

/** `30s`, `5m`, `1h`, `1.5m` or plain seconds (`90`, `0`) in milliseconds; undefined when it is none. */
export function duration(text: string | number): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(String(text));
  if (!m) return undefined;
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(m[2] ?? 's') as 'ms' | 's' | 'm' | 'h'];
  return Math.round(Number(m[1]) * unit);
}
