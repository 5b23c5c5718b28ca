/* blobdisk's validated, read-only configuration: the types every layer receives its slice
 * of, and the defaults, pinned by test/unit/options.test.ts. lib/options.ts turns flags into
 * it; nothing here knows about flags, environment or files. */

/** How blobdisk reaches an account. Validated by lib/options.ts; consumed only by lib/store.
 *  None of these values may ever be logged (see lib/redact.ts). */
export type Credentials =
  | { readonly kind: 'connectionString'; readonly connectionString: string }
  | { readonly kind: 'accountKey'; readonly account: string; readonly accountKey: string; readonly endpoint: string }
  | { readonly kind: 'sas'; readonly account: string; readonly sas: string; readonly endpoint: string }
  /** Microsoft Entra ID through DefaultAzureCredential: a service principal or workload
   *  identity from the environment, a managed identity, or the Azure CLI's login. */
  | { readonly kind: 'entra'; readonly account: string; readonly endpoint: string };

/** How a mount signs in, as --auth names it. */
export type AuthMode = 'connection-string' | 'key' | 'sas' | 'entra';
export const AUTH_MODES: readonly AuthMode[] = ['connection-string', 'key', 'sas', 'entra'];

export const DEFAULTS = Object.freeze({
  grainSize: 1024 * 1024,
  cacheSize: 10 * 1024 ** 3,
  /** Grains fetched ahead of a sequential reader, at most. */
  readAheadGrains: 16,
  /** Ranged GETs in flight per mount (demand reads may exceed it by their own count). */
  fetchConcurrency: 8,
  /** Largest single ranged GET: adjacent missing grains are fetched together up to this.
   *  8 MiB rather than 4: each GET costs the server and this process far more than the
   *  bytes it carries (against Azurite a cold read went from about 160 to 210 MB/s). */
  maxFetchBytes: 8 * 1024 * 1024,
  maxTries: 4,
  tryTimeoutMs: 30_000,
  /** Every request to Azure ends within this, retries included (--io-timeout): a read of
   *  data not cached fails with EIO then instead of hanging while Azure does not answer. */
  ioTimeoutMs: 30_000,
  /** How long directory listings and attributes are trusted before Azure is asked again. */
  attrTtlMs: 5_000,
  logLevel: 'info' as LogLevel,
  /** The cache must hold at least this many grains. */
  minCacheGrains: 4,
  minGrainSize: 64 * 1024,
  maxGrainSize: 64 * 1024 * 1024,
  sync: 'local' as SyncMode,
  /** Unmount gives up when nothing could be uploaded for this long. */
  drainTimeoutMs: 60_000,
  /** A write waits this long for room when the cache is full of data not yet uploaded. */
  dirtyWaitMs: 30_000,
  /** Dirty data waits this long before a background upload, so neighbouring writes coalesce. */
  writeBackDelayMs: 500,
  uploadConcurrency: 8,
  /** Crash-consistent checkpoints kept per page blob (--checkpoints); 0: off. */
  checkpoints: 0,
  /** A checkpoint is taken at the first fsync this long after the last one. */
  checkpointIntervalMs: 5 * 60_000,
  pageBlobPatterns: Object.freeze(['*.img', '*.raw', '*.vhd', '*.vmdk', '*.qcow2', '*.vdi']) as readonly string[],
});

export type SyncMode = 'local' | 'cloud';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'silent';
export const LOG_LEVELS: readonly LogLevel[] = ['debug', 'info', 'warn', 'error', 'silent'];

export interface CacheOptions {
  readonly dir: string;
  readonly sizeBytes: number;
  readonly grainSize: number;
}

export interface ReadOptions {
  readonly readAheadGrains: number;
  readonly fetchConcurrency: number;
  readonly maxFetchBytes: number;
}

export interface WriteOptions {
  /** What fsync waits for: the local disk, or Azure. */
  readonly sync: SyncMode;
  readonly drainTimeoutMs: number;
  readonly dirtyWaitMs: number;
  readonly writeBackDelayMs: number;
  readonly uploadConcurrency: number;
  /** New files whose name matches one of these globs become page blobs, others block blobs. */
  readonly pageBlobPatterns: readonly string[];
  /** Crash-consistent checkpoints kept per page blob; 0: off. */
  readonly checkpoints: number;
  /** A checkpoint is opened at the first fsync this long after the last; 0: every fsync. */
  readonly checkpointIntervalMs: number;
}

export interface MountOptions {
  readonly mountpoint: string;
  /** Undefined: start the embedded Azurite. */
  readonly credentials: Credentials | undefined;
  /** Root is this container; undefined: root lists one directory per container. */
  readonly container: string | undefined;
  readonly dataDir: string;
  readonly cache: CacheOptions;
  readonly read: ReadOptions;
  readonly write: WriteOptions;
  readonly readOnly: boolean;
  /** Who may use the mount, and the owner and modes `stat` shows. */
  readonly access: AccessOptions;
  readonly logLevel: LogLevel;
  /** Where to serve Prometheus metrics; undefined: nowhere. */
  readonly metricsAddr: { readonly host: string; readonly port: number } | undefined;
  readonly maxTries: number;
  readonly tryTimeoutMs: number;
  readonly ioTimeoutMs: number;
  readonly attrTtlMs: number;
  /** Handoff files (blobdisk handoff) whose images to take over and warm at mount. */
  readonly warmFrom: readonly string[];
}

/** Modes `stat` shows unless --file-mode and --dir-mode say otherwise. */
export const DEFAULT_FILE_MODE = 0o644;
export const DEFAULT_DIR_MODE = 0o755;

/** Who may use the mount, and the owner and modes `stat` shows (see lib/cli/access.ts). */
export interface AccessOptions {
  /** Other users (libvirt's QEMU runs as libvirt-qemu) may use the mount. */
  readonly allowOther: boolean;
  readonly uid: number;
  readonly gid: number;
  /** Permission bits of files; write bits are dropped on a read-only mount. */
  readonly fileMode: number;
  readonly dirMode: number;
}
