/* The two filesystems under test, each mounted by a child process: blobdisk through its
 * own CLI (bin/blobdisk mount, exactly as a user runs it) and the bare fuse-native
 * baseline (barefs.ts). Both unmount on SIGTERM; a child that dies mounted is cleared
 * lazily (umount -l, or fusermount3 -uz) so the benchmark never leaves a mount behind. */

import path from 'node:path';
import { Daemon, ensureUnmounted, runOk, setFuseReadAhead } from './lib';
import { MOUNT_NODE_FLAGS } from '../lib/cli/daemon';
import type { ImageCounters } from '../lib/metrics';
import type { MountStatus } from '../lib/mount';

const ROOT = path.resolve(__dirname, '..', '..');
const BLOBDISK = path.join(ROOT, 'bin', 'blobdisk');
const BAREFS = path.join(__dirname, 'barefs.js');

/** The counters `blobdisk status --json` reports (the part the benchmark reads). */
export type StatusCounters = ImageCounters & { requests: number; cacheUsedBytes: number };

export interface BlobdiskSettings {
  readonly grainSize: number;
  readonly readAhead: number;
  readonly cacheSize: number;
}

export interface BlobdiskMountOptions {
  readonly mountpoint: string;
  readonly cacheDir: string;
  readonly dataDir: string;
  readonly connectionString: string;
  readonly container: string;
  readonly settings: BlobdiskSettings;
  /** Extra node flags for the mount child, e.g. --cpu-prof. */
  readonly nodeArgs?: readonly string[];
  /** Kernel read-ahead for the mount in KiB; undefined leaves the kernel's 128. */
  readonly fuseReadAheadKiB?: number | undefined;
}

export class Mount {
  private constructor(
    readonly mountpoint: string,
    private readonly daemon: Daemon,
  ) {}

  get pid(): number {
    return this.daemon.pid;
  }

  static async blobdisk(o: BlobdiskMountOptions): Promise<Mount> {
    const args = [
      ...MOUNT_NODE_FLAGS,
      ...(o.nodeArgs ?? []),
      BLOBDISK, 'mount', o.mountpoint,
      '--container', o.container,
      '--cache-dir', o.cacheDir,
      '--data-dir', o.dataDir,
      '--cache-size', String(o.settings.cacheSize),
      '--grain-size', String(o.settings.grainSize),
      '--read-ahead', String(o.settings.readAhead),
      '--read-only',
      '--log-level', 'warn',
    ];
    // The connection string goes by environment so it does not show in ps.
    const env = { ...process.env, AZURE_STORAGE_CONNECTION_STRING: o.connectionString };
    const daemon = await Daemon.start('blobdisk mount', process.execPath, args, /^blobdisk: mounted /m, env);
    const m = new Mount(o.mountpoint, daemon);
    await m.tune(o.fuseReadAheadKiB);
    return m;
  }

  static async bare(mountpoint: string, dataFile: string, name: string, fuseReadAheadKiB?: number): Promise<Mount> {
    const daemon = await Daemon.start('barefs', process.execPath, [BAREFS, mountpoint, dataFile, name], /^barefs: mounted /m, process.env);
    const m = new Mount(mountpoint, daemon);
    await m.tune(fuseReadAheadKiB);
    return m;
  }

  private async tune(fuseReadAheadKiB: number | undefined): Promise<void> {
    if (fuseReadAheadKiB === undefined) return;
    try {
      await setFuseReadAhead(this.mountpoint, fuseReadAheadKiB);
    } catch (e) {
      await this.kill();
      throw e;
    }
  }

  /** Counters of a blobdisk mount, summed over its images. */
  async status(): Promise<StatusCounters> {
    const r = await runOk(process.execPath, [BLOBDISK, 'status', this.mountpoint, '--json'], { timeoutMs: 30_000 });
    const s = JSON.parse(r.stdout) as MountStatus;
    return { ...s.totals, requests: s.requests, bytesDown: s.bytesDown, cacheUsedBytes: s.cacheUsedBytes };
  }

  /** Unmounts (SIGTERM) and checks the child exited 0 and left nothing mounted. */
  async stop(): Promise<void> {
    const code = await this.daemon.stop();
    const leftover = await ensureUnmounted(this.mountpoint);
    if (code !== 0) throw new Error(`${this.daemon.name} exited ${code} on SIGTERM: ${this.daemon.output.trim().slice(-500)}`);
    if (leftover) throw new Error(`${this.daemon.name} exited but left ${this.mountpoint} mounted (cleared lazily)`);
  }

  /** Best effort for error paths: stop and clear, never throw. */
  async kill(): Promise<void> {
    await this.daemon.stop(10_000).catch(() => undefined);
    await ensureUnmounted(this.mountpoint).catch(() => undefined);
  }
}

/** Counters accumulated between two status snapshots. */
export function countersBetween(before: StatusCounters, after: StatusCounters): StatusCounters {
  const out = { ...after };
  for (const key of Object.keys(out) as (keyof StatusCounters)[]) {
    if (key !== 'cacheUsedBytes') out[key] = after[key] - before[key];
  }
  return out;
}
