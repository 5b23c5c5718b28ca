/* The FUSE session: the only place that loads fuse-native and talks to the kernel. It
 * mounts the operations of lib/fuse/ops.ts with the options every blobdisk mount needs
 * (big_writes, 1 MiB reads, no request timeout, the kernel enforcing owner and modes) and
 * unmounts again. */

import Fuse from 'fuse-native';
import { UsageError } from '../errors';
import type { Logger } from '../log';

export interface SessionOptions {
  /** Other users may use the mount (libvirt's QEMU runs as libvirt-qemu). */
  readonly allowOther: boolean;
}

export class FuseSession {
  private constructor(
    readonly mountpoint: string,
    private readonly fuse: Fuse,
    private readonly log: Logger,
  ) {}

  /** Mounts `ops` at `mountpoint`; resolves once the kernel serves it. Rejects with a
   *  UsageError saying why the kernel refused. */
  static async mount(mountpoint: string, ops: Fuse.Operations, options: SessionOptions, log: Logger): Promise<FuseSession> {
    const fuse = new Fuse(mountpoint, ops, {
      // libfuse reads -o options from the joined string: this is how big_writes gets through.
      fsname: 'blobdisk,big_writes',
      subtype: 'blobdisk',
      maxRead: 1024 * 1024,
      // Our own retries are bounded; fuse-native's 15 s default would cut a slow fetch short.
      timeout: false,
      // The kernel enforces the owner and modes stat shows, so --allow-other opens the mount
      // to exactly the users --uid, --gid, --file-mode and --dir-mode admit.
      defaultPermissions: true,
      allowOther: options.allowOther,
    });
    await new Promise<void>((resolve, reject) =>
      fuse.mount((err) => (err ? reject(new UsageError(`cannot mount at ${mountpoint}: ${err.message}`)) : resolve())),
    );
    return new FuseSession(mountpoint, fuse, log);
  }

  /** Asks the kernel to let go of the mount; never rejects (a failure is logged). */
  unmount(): Promise<void> {
    return new Promise<void>((resolve) =>
      this.fuse.unmount((err) => {
        if (err) this.log.warn(`unmounting ${this.mountpoint}: ${err.message}`);
        resolve();
      }),
    );
  }
}
