/* `blobdisk clone <mountpoint> <snapshot-or-image> <new-path>`: a new image by a server-side
 * copy, done by the running mount. From an image, a snapshot of it is taken first (flushed),
 * so the clone is one moment; from a .snapshots path, that snapshot. While Azure still
 * copies, the mount reads the clone from its source and refuses to open it for writing. */

import path from 'node:path';
import { Io, say } from './io';
import { backupCall, checkTimeout, mountPath } from './snapshot';

export interface CloneArgs {
  readonly mountpoint: string;
  readonly source: string;
  readonly target: string;
  readonly timeout?: number | undefined;
  readonly json?: boolean | undefined;
}

export async function cloneCommand(args: CloneArgs, io: Io): Promise<number> {
  const mountpoint = path.resolve(args.mountpoint);
  const source = mountPath(mountpoint, args.source, 'snapshot or image');
  const target = mountPath(mountpoint, args.target, 'new path');
  const r = (await backupCall(io, mountpoint, `clone of ${source}`, { op: 'clone', source, path: target, ...checkTimeout(args.timeout) })) as {
    status: string;
    source: string;
    keptSnapshot: string | null;
  };
  if (args.json === true) io.stdout.write(`${JSON.stringify({ ...r, path: path.join(mountpoint, target) })}\n`);
  if (r.status === 'success') {
    say(io, `cloned ${source.slice(1)} to ${target.slice(1)} (snapshot ${r.source}); the copy is done`);
  } else {
    say(io, `cloned ${source.slice(1)} to ${target.slice(1)} (snapshot ${r.source}); Azure is still copying (${r.status}): reads come from the snapshot meanwhile, opening it for writing fails with EBUSY until the copy is done${r.keptSnapshot !== null ? `; the snapshot taken for it (${r.keptSnapshot}) stays, delete it afterwards with blobdisk snapshot --delete` : ''}`);
  }
  return 0;
}
