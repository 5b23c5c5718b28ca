/* Mounting, draining and status: checks what the user gave, starts the embedded Azurite
 * when no credentials are given, builds the stack over a MeteredStore of Azure with
 * lib/stack.ts, serves it through the FUSE session and answers `blobdisk unmount|status|
 * flush` on the control socket. Everything is checked before the kernel sees a mount, and
 * whatever was started is stopped again when a later step fails, so a refused mount leaves
 * nothing behind. */

import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CacheLock } from './cache/lock';
import { ControlServer, controlSocketPath } from './control';
import { BlobdiskError, UsageError, isBlobdiskError, isKind } from './errors';
import { fastTable } from './fuse/fuse3';
import { createOperations } from './fuse/ops';
import { Handles } from './fuse/handles';
import { FuseSession } from './fuse/session';
import { FlushProgress } from './flusher/flusher';
import { GrainMap } from './grainmap/grainmap';
import { Images } from './image/registry';
import { locate } from './namespace/paths';
import { Logger } from './log';
import { ImageCounters } from './metrics';
import { MountOptions } from './config';
import { checkAllowOther, checkCacheDir, checkMountpoint, mountPoints, openToOthers } from './preflight';
import { RunningAzurite, embeddedAccountKey, startAzurite } from './azurite';
import { AzureStore } from './store/azure';
import { MeteredStore } from './store/metered';
import { Credentials, accountOf } from './store/credentials';
import { buildStack, type Stack } from './stack';
import { Backups } from './namespace/backups';
import { backupRequest } from './namespace/requests';
import { Handoffs, handoffRequest, type WarmProgress } from './namespace/handoff';
import { hostIdentity } from './remote/holder';
import { Metrics, MetricsServer, type MetricsSnapshot } from './prometheus';
import { SYSTEM_TIMING, type Timing } from './tunables';

/** How often the mount looks whether someone unmounted it from outside (umount, fusermount3 -u). */
const MOUNT_WATCH_MS = 2_000;

export interface ImageStatus {
  readonly path: string;
  readonly kind: string;
  readonly size: number;
  readonly cachedBytes: number;
  readonly dirtyBytes: number;
  readonly oldestDirtySeconds: number | null;
  readonly bytesUp: number;
  readonly bytesDown: number;
  readonly hitRatio: number | null;
  readonly conflict: string | null;
  /** Why Azure refused the image's uploads, while they are stopped. */
  readonly uploadsStopped: string | null;
  /** The image's Azure lease: held, lost (a renewal found it gone) or none. */
  readonly lease: 'held' | 'lost' | 'none';
  /** The UTC time (of its fsync) of the image's last checkpoint taken by this mount, if any. */
  readonly lastCheckpoint: string | null;
  /** Its warm-up (from a handoff file, --warm-from, or its last boot), if it has one. */
  readonly prefetch: WarmProgress | null;
  readonly counters: ImageCounters;
}

export interface MountStatus {
  readonly mountpoint: string;
  readonly pid: number;
  readonly cacheDir: string;
  readonly cacheUsedBytes: number;
  readonly cacheSizeBytes: number;
  readonly grainSize: number;
  readonly cacheDirtyBytes: number;
  /** FUSE reads and writes served on libfuse's threads from cached grains (lib/cache/native.ts), in all. */
  readonly native: { readonly reads: number; readonly writes: number };
  readonly requests: number;
  readonly bytesDown: number;
  readonly bytesUp: number;
  readonly dirtyBytes: number;
  readonly hitRatio: number | null;
  /** When Azure stopped answering at all (ISO time), or null while it answers. */
  readonly azureUnreachableSince: string | null;
  /** Images an earlier mount left with data not yet uploaded that could not be opened. */
  readonly unopened: string[];
  readonly totals: ImageCounters;
  readonly images: ImageStatus[];
}

export interface DrainResult {
  readonly drained: boolean;
  /** Bytes that stay dirty in the cache for the next mount. */
  readonly dirtyBytes: number;
  readonly reason?: string;
}

export interface Mounted {
  readonly options: MountOptions;
  /** Resolves when the mount has ended, by unmount() or because it was unmounted outside. */
  readonly ended: Promise<DrainResult>;
  status(): Promise<MountStatus>;
  /** Drains what is dirty to Azure (bounded by --drain-timeout), unmounts and releases
   *  everything. Idempotent. */
  unmount(onProgress?: (p: FlushProgress) => void): Promise<DrainResult>;
}

/** After a crash: open every image that still holds dirty grains, so the flusher uploads them.
 *  Returns the names of those that could not be opened (their data stays in the cache). */
async function recover(map: GrainMap, images: Images, log: Logger, mountpoint: string): Promise<string[]> {
  const stuck: string[] = [];
  for (const row of map.imagesWithDirtyGrains()) {
    const ref = { container: row.container, name: row.name };
    try {
      await images.recover(ref);
      log.info(`uploading what an earlier mount left dirty in ${row.container}/${row.name}`);
    } catch (e) {
      log.error(
        `${row.container}/${row.name} holds data not yet uploaded, but cannot be opened (${isBlobdiskError(e) ? e.kind : 'error'}: ${(e as Error).message}); ` +
          `it stays in the cache until blobdisk recover ${mountpoint} <image> --to <new-name> (or --discard) resolves it`,
      );
      stuck.push(`${row.container}/${row.name}`);
    }
  }
  return stuck;
}

/** What the Prometheus metrics read of a status. */
function snapshotOf(s: MountStatus): MetricsSnapshot {
  const ages = s.images.map((i) => i.oldestDirtySeconds).filter((a): a is number => a !== null);
  return {
    totals: s.totals,
    cacheUsedBytes: s.cacheUsedBytes,
    cacheSizeBytes: s.cacheSizeBytes,
    dirtyBytes: s.dirtyBytes,
    oldestDirtySeconds: ages.length > 0 ? Math.max(...ages) : null,
    images: s.images.map((i) => ({ path: i.path, dirtyBytes: i.dirtyBytes, lease: i.lease, conflict: i.conflict })),
    azureUnreachableSeconds: s.azureUnreachableSince !== null ? Math.max(0, Math.round((Date.now() - Date.parse(s.azureUnreachableSince)) / 1000)) : null,
  };
}

/** The lease duration: 60 s, or BLOBDISK_LEASE_SECONDS (15 to 60, Azure's bounds). A short
 *  lease lets another host take a blob sooner after this mount died, at the price of more
 *  renewals; it is no mount flag because almost nobody should change it. */
export function leaseTiming(env: NodeJS.ProcessEnv): Timing {
  const text = env.BLOBDISK_LEASE_SECONDS;
  if (text === undefined || text === '') return SYSTEM_TIMING;
  const seconds = Number(text);
  if (!Number.isInteger(seconds) || seconds < 15 || seconds > 60) throw new UsageError(`BLOBDISK_LEASE_SECONDS=${text} is not a whole number of seconds from 15 to 60 (Azure's lease bounds); give e.g. 30, or unset it for 60`);
  return { clock: SYSTEM_TIMING.clock, tunables: { ...SYSTEM_TIMING.tunables, leaseSeconds: seconds } };
}

/** Turns a failure of the first request to Azure into one line that says what to do. */
function accessError(e: unknown, options: MountOptions, where: string): Error {
  if (!isBlobdiskError(e)) return e instanceof Error ? e : new Error(String(e));
  switch (e.kind) {
    case 'not-found':
      return new UsageError(`container ${options.container ?? '?'} does not exist in ${where}; create it, or leave out --container to see all containers`);
    case 'denied':
      // The store's reason names what to fix: the key, a SAS permission, a role, the sign-in.
      return new UsageError(`Azure refused ${where}: ${e.message.replace(/^\S+ failed: /, '')}`);
    case 'invalid':
      return new UsageError(`${e.message}`);
    default:
      return new UsageError(`cannot reach Azure Storage for ${where}: ${e.message}`);
  }
}

/** Mounts according to `options`; resolves once the kernel serves the mount. */
export async function mount(options: MountOptions, log: Logger): Promise<Mounted> {
  const cleanup: (() => Promise<void> | void)[] = [];
  const undo = async (): Promise<void> => {
    for (const step of cleanup.reverse()) {
      try {
        await step();
      } catch (e) {
        log.warn(`cleanup step failed: ${(e as Error).message}`);
      }
    }
  };
  try {
    const timing = leaseTiming(process.env);
    await checkMountpoint(options.mountpoint);
    checkAllowOther(options.access, process.getuid?.() ?? 0, await fsp.readFile('/etc/fuse.conf', 'utf8').catch(() => ''));
    for (const dir of [options.dataDir, options.cache.dir]) {
      const warning = await openToOthers(dir);
      if (warning !== undefined) log.warn(warning);
    }
    await checkCacheDir(options.cache.dir, 4 * options.cache.grainSize);
    const lock = CacheLock.acquire(options.cache.dir, options.mountpoint);
    cleanup.push(() => lock.release());

    let credentials: Credentials | undefined = options.credentials;
    let where: string;
    if (credentials === undefined) {
      const location = path.join(options.dataDir, 'azurite');
      const azurite: RunningAzurite = await startAzurite({ location, accountKey: await embeddedAccountKey(location) });
      cleanup.push(() => azurite.stop());
      credentials = { kind: 'connectionString', connectionString: azurite.connectionString };
      where = 'the embedded Azurite';
      log.info(`no Azure credentials given: using the embedded Azurite at ${azurite.endpoint} (data in ${location})`);
    } else {
      where = `account ${accountOf(credentials)}`;
    }
    const account = accountOf(credentials);
    // The metrics read the mount's status when scraped; `status` is defined once the stack is.
    let status: () => Promise<MountStatus> = () => Promise.reject(new Error('the mount is not ready yet'));
    const metrics = options.metricsAddr !== undefined ? new Metrics(async () => snapshotOf(await status())) : undefined;
    let store: MeteredStore;
    try {
      store = new MeteredStore(new AzureStore({ credentials, maxTries: options.maxTries, tryTimeoutMs: options.tryTimeoutMs, deadlineMs: options.ioTimeoutMs }), (r) => metrics?.observe(r));
    } catch (e) {
      throw accessError(e, options, where);
    }
    cleanup.push(() => store.close());
    try {
      if (options.container !== undefined) await store.checkContainer(options.container);
      else await store.listContainers();
    } catch (e) {
      throw accessError(e, options, where);
    }

    if (metrics !== undefined && options.metricsAddr !== undefined) {
      const server = await MetricsServer.listen(options.metricsAddr, metrics, log);
      cleanup.push(() => server.close());
      log.info(`serving metrics at ${server.url}`);
    }

    // Reads and writes of cached grains served on libfuse's threads (lib/cache/native.ts);
    // BLOBDISK_FAST_PATH=0 serves every request in JavaScript (to compare, or to rule it out).
    const fast = process.env.BLOBDISK_FAST_PATH === '0' ? undefined : fastTable(options.cache.grainSize, path.join(options.cache.dir, 'native.journal'));
    let stack: Stack;
    try {
      stack = buildStack(
        store,
        {
          cache: options.cache,
          ...(fast ? { fast } : {}),
          read: options.read,
          sync: options.write.sync,
          // A write waiting for room waits on uploads to Azure: --io-timeout bounds it too.
          dirtyWaitMs: Math.min(options.write.dirtyWaitMs, options.ioTimeoutMs),
          ioTimeoutMs: options.ioTimeoutMs,
          writeBackDelayMs: options.write.writeBackDelayMs,
          uploadConcurrency: options.write.uploadConcurrency,
          checkpoints: { keep: options.write.checkpoints, intervalMs: options.write.checkpointIntervalMs, waitMs: options.ioTimeoutMs },
          namespace: { container: options.container, attrTtlMs: options.attrTtlMs, readOnly: options.readOnly, pageBlobPatterns: options.write.pageBlobPatterns },
          account,
          host: await hostIdentity(),
          timing,
          holder: { host: os.hostname(), mountpoint: options.mountpoint },
          bootPrefetch: true,
        },
        log,
      );
    } catch (e) {
      throw isBlobdiskError(e) ? new UsageError(e.message) : e;
    }
    cleanup.push(() => stack.close());
    const { map, cache, flusher, images, namespace: ns } = stack;
    cache.startWorker();
    const stuck = await recover(map, images, log, options.mountpoint);
    // blobdisk handoff and --warm-from (lib/namespace/handoff.ts): leases now, warming in the background.
    const handoffs = new Handoffs({ ...stack, ns, log, clock: timing.clock, grainSize: options.cache.grainSize, readOnly: options.readOnly, container: options.container, flush: (image, stallMs, onProgress) => flusher.flush([image], { stallMs, onProgress }) });
    cleanup.push(() => handoffs.close());
    for (const file of options.warmFrom) await handoffs.warmFrom(file);
    const handles = new Handles();
    const { access } = options;
    const ops = createOperations(
      ns,
      handles,
      { uid: access.uid, gid: access.gid, fileMode: access.fileMode, dirMode: access.dirMode, grainSize: options.cache.grainSize },
      log,
      cache.native,
    );
    const session = await FuseSession.mount(options.mountpoint, ops, { allowOther: access.allowOther, ...(fast ? { fast } : {}) }, log);
    // After an outside unmount (umount, fusermount3 -u) the kernel has nothing left to let go.
    cleanup.push(async () => {
      if ((await mountPoints()).has(options.mountpoint)) await session.unmount();
    });

    status = async (): Promise<MountStatus> => {
      // Reads and writes the FUSE binding served count at once, not at its next settle.
      cache.native.settle();
      const all = await images.all();
      const totals = await images.totals();
      return {
        mountpoint: options.mountpoint,
        pid: process.pid,
        cacheDir: options.cache.dir,
        cacheUsedBytes: cache.stats.usedBytes,
        cacheSizeBytes: options.cache.sizeBytes,
        grainSize: options.cache.grainSize,
        cacheDirtyBytes: cache.stats.dirtyBytes,
        native: cache.native.served(),
        requests: store.counters.requests,
        bytesDown: store.counters.bytesDown,
        bytesUp: store.counters.bytesUp,
        dirtyBytes: all.reduce((n, i) => n + flusher.dirtyOf(i).bytes, 0),
        hitRatio: totals.hits + totals.misses > 0 ? totals.hits / (totals.hits + totals.misses) : null,
        azureUnreachableSince: store.unreachableSince !== null ? new Date(store.unreachableSince).toISOString() : null,
        unopened: stuck.filter((name) => !all.some((i) => `${i.ref.container}/${i.ref.name}` === name)),
        totals,
        images: all.map((image) => {
          const dirty = flusher.dirtyOf(image);
          const c = image.counters;
          return {
            path: `${options.container === undefined ? `${image.ref.container}/${image.ref.name}` : image.ref.name}${image.ref.snapshot !== undefined ? ` (snapshot ${image.ref.snapshot})` : ''}`,
            kind: image.kind,
            size: image.size,
            cachedBytes: image.cachedBytes(),
            dirtyBytes: dirty.bytes,
            oldestDirtySeconds: dirty.since > 0 ? Math.round((Date.now() - dirty.since) / 1000) : null,
            bytesUp: c.bytesUp,
            bytesDown: c.bytesDown,
            hitRatio: c.hits + c.misses > 0 ? c.hits / (c.hits + c.misses) : null,
            conflict: image.conflict ?? null,
            uploadsStopped: flusher.refusedOf(image) ?? null,
            lease: image.remote.lease.state,
            lastCheckpoint: image.checkpoints?.last ?? null,
            prefetch: handoffs.progressOf(image) ?? image.bootPrefetch ?? null,
            counters: { ...c },
          };
        }),
      };
    };

    /** Uploads everything dirty now; with a stall bound, gives up when nothing moves that long. */
    const flush = async (stallMs: number | undefined, onProgress: (p: FlushProgress) => void): Promise<void> => {
      await flusher.flush(await images.all(), { ...(stallMs !== undefined ? { stallMs } : {}), onProgress });
    };

    let endedResolve: (result: DrainResult) => void = () => undefined;
    const ended = new Promise<DrainResult>((resolve) => (endedResolve = resolve));
    let unmounting: Promise<DrainResult> | undefined;
    const unmount = (onProgress: (p: FlushProgress) => void = () => undefined): Promise<DrainResult> => {
      unmounting ??= (async () => {
        clearInterval(watch);
        // Drain first: the kernel may still send writes until the unmount, but what was
        // dirty when the user asked to stop goes up before we let go.
        let result: DrainResult = { drained: true, dirtyBytes: 0 };
        try {
          await flush(options.write.drainTimeoutMs, onProgress);
        } catch (e) {
          const hint = isKind(e, 'conflict') ? '; blobdisk recover resolves it' : '';
          result = { drained: false, dirtyBytes: cache.stats.dirtyBytes, reason: `${(e as Error).message}${hint}` };
        }
        // Writes that slipped in while draining, then the leases.
        if (result.drained) await flush(options.write.drainTimeoutMs, onProgress).catch(() => undefined);
        const left = (await images.all()).reduce((n, i) => n + flusher.dirtyOf(i).bytes, 0);
        if (left > 0) result = { drained: false, dirtyBytes: left, reason: result.reason ?? 'writes kept arriving' };
        // Data of images that could not be opened at mount is not in Azure either: say so.
        const unopened = cache.stats.dirtyBytes - left;
        if (stuck.length > 0 && unopened > 0) {
          result = { drained: false, dirtyBytes: left + unopened, reason: `${stuck.join(', ')} could not be opened${result.drained ? '' : `; ${result.reason ?? ''}`}` };
        }
        for (const image of await images.all()) if (!image.needsUpload()) await image.remote.releaseLease();
        // Everything is in Azure and every lease let go: the next mount proposes a new lease id.
        if (left === 0 && result.drained) map.forgetLeaseId();
        await undo();
        return result;
      })();
      // The control socket goes last: a `blobdisk unmount` waiting on it gets its answer first.
      void unmounting.then(async (result) => {
        await control.close();
        endedResolve(result);
      });
      return unmounting;
    };
    // blobdisk snapshot, clone, diff and rm (lib/namespace/backups.ts).
    const backups = new Backups(ns, store, images, (image, stallMs, onProgress) => flusher.flush([image], { stallMs, onProgress }), log);
    const control = await ControlServer.listen(controlSocketPath(options.mountpoint), async (request, progress) => {
      const backup = backupRequest(backups, request, progress, options.write.drainTimeoutMs) ?? handoffRequest(handoffs, request, progress, options.write.drainTimeoutMs);
      if (backup !== undefined) return backup;
      if (request.op === 'status') return status();
      if (request.op === 'flush') {
        // Never forever: give up when nothing could be uploaded for the asked time (or --drain-timeout).
        const stallMs = typeof request.timeoutMs === 'number' && request.timeoutMs > 0 ? request.timeoutMs : options.write.drainTimeoutMs;
        if (typeof request.path === 'string') {
          const image = await ns.open(request.path);
          await flusher.flush([image], { onProgress: progress, stallMs });
        } else {
          await flush(stallMs, progress);
        }
        return { flushed: true };
      }
      if (request.op === 'unmount') return unmount(progress);
      if (request.op === 'recover') {
        // `blobdisk recover`: save (with `to`) and drop the local version of one image.
        const where = locate(typeof request.path === 'string' ? request.path : '', options.container);
        if (where.container === undefined || where.name === '') throw new BlobdiskError('invalid', `${String(request.path)} is not an image of the mount`);
        const ref = { container: where.container, name: where.name };
        const result = await images.recoverLocal(ref, typeof request.to === 'string' ? request.to : undefined);
        // Its data no longer waits in the cache: unmount need not report it.
        if (result.outcome !== 'nothing') stuck.splice(0, stuck.length, ...stuck.filter((s) => s !== `${ref.container}/${ref.name}`));
        return result;
      }
      throw new BlobdiskError('invalid', `unknown request ${request.op}`);
    });
    const watch = setInterval(() => {
      void mountPoints().then((mounts) => {
        if (!mounts.has(options.mountpoint) && !unmounting) {
          log.info(`${options.mountpoint} was unmounted from outside; shutting down`);
          void unmount();
        }
      });
    }, MOUNT_WATCH_MS);
    watch.unref();
    return { options, ended, status, unmount };
  } catch (e) {
    await undo();
    throw e;
  }
}
