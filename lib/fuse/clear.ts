/* Clearing a FUSE mount whose process is gone. libfuse 3's helper is fusermount3 (Debian
 * package fuse3); root needs no helper and unmounts with umount(8), as libfuse 3 itself
 * does. A lazy unmount follows when the plain one fails (a file of it still open). */

import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** The command lines that unmount `mountpoint`, plain first, then lazy. */
export function unmountCommands(mountpoint: string, root = process.getuid?.() === 0): [string, string[]][] {
  return root
    ? [['umount', [mountpoint]], ['umount', ['-l', mountpoint]]]
    : [['fusermount3', ['-u', mountpoint]], ['fusermount3', ['-uz', mountpoint]]];
}

/** Unmounts `mountpoint`; rejects with the last command's failure when neither worked. */
export async function clearMount(mountpoint: string): Promise<void> {
  let last: unknown;
  for (const [cmd, args] of unmountCommands(mountpoint)) {
    try {
      await run(cmd, args);
      return;
    } catch (e) {
      last = e;
    }
  }
  throw last;
}
