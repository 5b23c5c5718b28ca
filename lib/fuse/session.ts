/* The FUSE session: the only place that mounts and talks to the kernel, through blobdisk's
 * libfuse 3 binding (lib/fuse/fuse3.ts). It mounts the operations of lib/fuse/ops.ts with
 * the options every blobdisk mount needs (1 MiB requests, the kernel enforcing owner and
 * modes; libfuse 3 has no request timeout and always sends big writes) and unmounts again. */

import { UsageError } from '../errors';
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
