/* `blobdisk rm <mountpoint> <image> [--with-snapshots]`: deletes an image through the running
 * mount. Like `rm` in the mount it refuses an image that has snapshots, unless
 * --with-snapshots, which deletes them with it. */

import path from 'node:path';
import { Io, say } from './io';
import { backupCall, mountPath } from './snapshot';

export async function rmCommand(args: { mountpoint: string; image: string; withSnapshots?: boolean | undefined }, io: Io): Promise<number> {
  const mountpoint = path.resolve(args.mountpoint);
  const image = mountPath(mountpoint, args.image);
  await backupCall(io, mountpoint, `rm of ${image}`, { op: 'rm', path: image, withSnapshots: args.withSnapshots === true });
  say(io, `removed ${image.slice(1)}${args.withSnapshots === true ? ' and its snapshots' : ''}`);
  return 0;
}
