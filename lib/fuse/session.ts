/* The FUSE session: the only place that mounts and talks to the kernel, through blobdisk's
 * libfuse 3 binding (lib/fuse/fuse3.ts). It mounts the operations of lib/fuse/ops.ts with
 * the options every blobdisk mount needs (1 MiB requests, the kernel enforcing owner and
 * modes; libfuse 3 has no request timeout and always sends big writes) and unmounts again. */

import fsp from 'node:fs/promises';
import { canonicalMountpoint } from '../control';
import { UsageError } from '../errors';
import { mountTable } from '../preflight';
import type { Logger } from '../log';
import { Fuse3, NativeFastTable, Operations } from './fuse3';

export interface SessionOptions {
  /** Other users may use the mount (libvirt's QEMU runs as libvirt-qemu). */
  readonly allowOther: boolean;
  /** The kernel's writeback cache: writes are gathered in the page cache and reach
   *  blobdisk later (at the latest on fsync and close). Off: a write returns only once it
   *  is in blobdisk's cache, which is the write contract blobdisk documents. */
  readonly writebackCache?: boolean;
  /** Reads and writes of published grains served on libfuse's threads (lib/cache/native.ts). */
  readonly fast?: NativeFastTable;
}

export class FuseSession {
  private constructor(
    readonly mountpoint: string,
    private readonly fuse: Fuse3,
    private readonly log: Logger,
  ) {}

  /** Mounts `ops` at `mountpoint`; resolves once the kernel serves it. Rejects with a
   *  UsageError saying why the kernel refused. */
  static async mount(mountpoint: string, ops: Operations, options: SessionOptions, log: Logger): Promise<FuseSession> {
    // The kernel enforces the owner and modes stat shows, so --allow-other opens the mount
    // to exactly the users --uid, --gid, --file-mode and --dir-mode admit.
    const o = ['fsname=blobdisk', 'subtype=blobdisk', 'default_permissions'];
    if (options.allowOther) o.push('allow_other');
    try {
      const fuse = await Fuse3.mount(mountpoint, ops, { options: o, writeback: options.writebackCache ?? false, ...(options.fast ? { fast: options.fast } : {}) });
      log.debug(`FUSE session at ${mountpoint}: requests up to ${fuse.connection.maxWrite} bytes, writeback cache ${fuse.connection.writeback ? 'on' : 'off'}`);
      await raiseReadAhead(mountpoint, fuse.connection.maxWrite, log);
      return new FuseSession(mountpoint, fuse, log);
    } catch (e) {
      throw new UsageError(`cannot mount at ${mountpoint}: ${e instanceof Error ? e.message : String(e)}`);
    }
  }

  /** Asks the kernel to let go of the mount; never rejects (a failure is logged). */
  async unmount(): Promise<void> {
    try {
      if (!(await this.fuse.unmount())) this.log.warn(`${this.mountpoint} is detached, but a file of it is still open somewhere; its FUSE session ends when that closes`);
    } catch (e) {
      this.log.warn(`unmounting ${this.mountpoint}: ${e instanceof Error ? e.message : String(e)}`);
    }
  }
}

/** The kernel reads ahead of a sequential reader of a FUSE file 128 KiB at a time, whatever
 *  request size the filesystem takes; blobdisk's grains and requests are 1 MiB. As root,
 *  the mount's read-ahead (/sys/class/bdi/MAJOR:MINOR/read_ahead_kb, the device found in
 *  /proc/self/mountinfo, not by a stat through the mount) is raised to its largest request:
 *  a sequential read of cached grains went from about 820 to 1,300-1,600 MB/s. Other users
 *  may not write there and keep the kernel's 128 KiB. */
async function raiseReadAhead(mountpoint: string, bytes: number, log: Logger): Promise<void> {
  if (process.getuid?.() !== 0) return;
  try {
    const dev = (await mountTable()).get(canonicalMountpoint(mountpoint))?.device;
    if (!dev || !/^\d+:\d+$/.test(dev)) return;
    await fsp.writeFile(`/sys/class/bdi/${dev}/read_ahead_kb`, String(Math.floor(bytes / 1024)));
    log.debug(`kernel read-ahead of ${mountpoint} set to ${Math.floor(bytes / 1024)} KiB`);
  } catch (e) {
    log.debug(`could not raise the kernel read-ahead of ${mountpoint}: ${e instanceof Error ? e.message : String(e)}`);
  }
}
