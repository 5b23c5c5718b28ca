/* The flags of `blobdisk mount`, once: their names, types, help groups and the default the
 * help shows. The same names serve on the command line (--cache-size), in the environment
 * (BLOBDISK_CACHE_SIZE) and in a --config file (cache-size:), as rclone's flags do; the
 * defaults themselves live in lib/config.ts and are applied by lib/options.ts. */

import { DEFAULT_DIR_MODE, DEFAULT_FILE_MODE, DEFAULTS } from '../config';
import { formatSize } from '../units';

export type FlagType = 'string' | 'number' | 'boolean' | 'array';

export const GROUPS = ['Azure:', 'Cache:', 'Writes:', 'FUSE and access:', 'Logging and metrics:', 'Running:'] as const;
export type Group = (typeof GROUPS)[number];

export interface Flag {
  readonly name: string;
  readonly type: FlagType;
  readonly group: Group;
  readonly describe: string;
  /** What the help shows as the default (the value itself is applied in lib/options.ts). */
  readonly shown?: string;
  readonly choices?: readonly string[];
  /** Never printed: --print-config masks it. */
  readonly secret?: boolean;
}

const oct = (mode: number): string => `0${mode.toString(8)}`;

export const MOUNT_FLAGS: readonly Flag[] = [
  { name: 'auth', type: 'string', group: 'Azure:', describe: 'how to sign in; entra uses DefaultAzureCredential (managed identity, az login, service principal, workload identity)', shown: 'from what is given', choices: ['connection-string', 'key', 'sas', 'entra'] },
  { name: 'connection-string', type: 'string', group: 'Azure:', describe: 'storage connection string (also AZURE_STORAGE_CONNECTION_STRING)', secret: true },
  { name: 'account', type: 'string', group: 'Azure:', describe: 'storage account name, with --account-key or --sas' },
  { name: 'account-key', type: 'string', group: 'Azure:', describe: 'the account key (also AZURE_STORAGE_KEY with AZURE_STORAGE_ACCOUNT)', secret: true },
  { name: 'account-key-file', type: 'string', group: 'Azure:', describe: 'a file holding the account key, kept out of the command line' },
  { name: 'sas', type: 'string', group: 'Azure:', describe: 'a SAS token, account or container (also AZURE_STORAGE_SAS_TOKEN)', secret: true },
  { name: 'endpoint', type: 'string', group: 'Azure:', describe: 'blob endpoint URL for --account', shown: 'https://ACCOUNT.blob.core.windows.net' },
  { name: 'io-timeout', type: 'number', group: 'Azure:', describe: 'seconds every request to Azure may take, retries included; then EIO instead of a hang', shown: String(DEFAULTS.ioTimeoutMs / 1000) },
  { name: 'container', type: 'string', group: 'Azure:', describe: 'mount this container as the root', shown: 'one directory per container' },
  { name: 'data-dir', type: 'string', group: 'Cache:', describe: "blobdisk's state and the embedded Azurite's data", shown: '~/.local/share/blobdisk or $BLOBDISK_HOME' },
  { name: 'cache-dir', type: 'string', group: 'Cache:', describe: 'the local grain cache and its grain map', shown: 'DATA_DIR/cache' },
  { name: 'cache-size', type: 'string', group: 'Cache:', describe: 'bound of the cache; clean grains are evicted first, dirty ones never', shown: formatSize(DEFAULTS.cacheSize).replace(' GiB', 'G') },
  { name: 'grain-size', type: 'string', group: 'Cache:', describe: 'caching unit, a power of two from 64K to 64M', shown: '1M' },
  { name: 'read-ahead', type: 'string', group: 'Cache:', describe: 'how far ahead of a sequential reader to fetch', shown: `${DEFAULTS.readAheadGrains} grains` },
  { name: 'sync', type: 'string', group: 'Writes:', describe: 'what fsync waits for: the local disk (uploaded later) or Azure', shown: DEFAULTS.sync, choices: ['local', 'cloud'] },
  { name: 'write-back-delay', type: 'number', group: 'Writes:', describe: 'seconds an image stays quiet before its changes upload', shown: String(DEFAULTS.writeBackDelayMs / 1000) },
  { name: 'drain-timeout', type: 'number', group: 'Writes:', describe: 'unmount gives up after this many seconds without upload progress', shown: String(DEFAULTS.drainTimeoutMs / 1000) },
  { name: 'checkpoints', type: 'number', group: 'Writes:', describe: 'keep this many crash-consistent checkpoints (Azure snapshots, each the image at one fsync) per page blob', shown: '0 (off)' },
  { name: 'checkpoint-interval', type: 'string', group: 'Writes:', describe: 'take a checkpoint at the first fsync this long after the last one (30s, 5m, 1h; 0: every fsync)', shown: '5m' },
  { name: 'page-blob-pattern', type: 'array', group: 'Writes:', describe: 'new files matching these names become page blobs, others block blobs', shown: DEFAULTS.pageBlobPatterns.join(' ') },
  { name: 'warm-from', type: 'array', group: 'Cache:', describe: 'take over the image of a blobdisk handoff file (only if unchanged since) and prefetch its hot grains; repeatable' },
  { name: 'read-only', type: 'boolean', group: 'FUSE and access:', describe: 'refuse every change with EROFS', shown: 'false' },
  { name: 'allow-other', type: 'boolean', group: 'FUSE and access:', describe: 'let other users (libvirt-qemu) use the mount, as owner and modes allow', shown: 'false' },
  { name: 'uid', type: 'string', group: 'FUSE and access:', describe: 'owner of every file and directory, a user name or number', shown: 'who mounts' },
  { name: 'gid', type: 'string', group: 'FUSE and access:', describe: 'group of every file and directory, a group name or number', shown: 'who mounts' },
  { name: 'file-mode', type: 'string', group: 'FUSE and access:', describe: 'permission bits of files, octal', shown: oct(DEFAULT_FILE_MODE) },
  { name: 'dir-mode', type: 'string', group: 'FUSE and access:', describe: 'permission bits of directories, octal', shown: oct(DEFAULT_DIR_MODE) },
  { name: 'dir-cache-time', type: 'number', group: 'FUSE and access:', describe: 'seconds listings and attributes are trusted before Azure is asked again', shown: String(DEFAULTS.attrTtlMs / 1000) },
  { name: 'log-level', type: 'string', group: 'Logging and metrics:', describe: 'how much to log', shown: DEFAULTS.logLevel, choices: ['debug', 'info', 'warn', 'error', 'silent'] },
  { name: 'log-file', type: 'string', group: 'Logging and metrics:', describe: 'with --daemon: append the log here', shown: 'DATA_DIR/blobdisk.log' },
  { name: 'metrics-addr', type: 'string', group: 'Logging and metrics:', describe: 'serve Prometheus metrics at http://HOST:PORT/metrics, e.g. 127.0.0.1:9464' },
  { name: 'daemon', type: 'boolean', group: 'Running:', describe: 'detach once mounted; the exit status says whether it mounted', shown: 'false' },
  { name: 'pid-file', type: 'string', group: 'Running:', describe: 'write the mount process id here while it runs' },
];

/** `cache-size` → `cacheSize`, the key yargs and MountArgs use. */
export function camel(name: string): string {
  return name.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}

/** `cache-size` → `BLOBDISK_CACHE_SIZE`. */
export function envName(name: string): string {
  return `BLOBDISK_${name.toUpperCase().replace(/-/g, '_')}`;
}
