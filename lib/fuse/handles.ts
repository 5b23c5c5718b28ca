/* Open file handles: the number the kernel passes back on read/write/release. */

import { BlobdiskError } from '../errors';
import { Image } from '../image/image';

export interface Handle {
  readonly image: Image;
  readonly path: string;
  readonly flags: number;
}

export class Handles {
  private readonly open = new Map<number, Handle>();
  private next = 1;

  add(handle: Handle): number {
    while (this.open.has(this.next)) this.next = (this.next % 0x7fffffff) + 1;
    const fd = this.next;
    this.next = (this.next % 0x7fffffff) + 1;
    this.open.set(fd, handle);
    return fd;
  }

  /** The handle `fd`, or undefined when it is not open. */
  find(fd: number): Handle | undefined {
    return this.open.get(fd);
  }

  get(fd: number): Handle {
    const handle = this.open.get(fd);
    if (!handle) throw new BlobdiskError('EBADF', `no open file with handle ${fd}`);
    return handle;
  }

  release(fd: number): void {
    this.open.delete(fd);
  }

  get size(): number {
    return this.open.size;
  }
}
