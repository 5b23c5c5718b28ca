/* `blobdisk handoff <mountpoint> <image> [--to FILE]`: the running mount drains the image,
 * lets go of its lease and describes it (lib/namespace/handoff.ts); this writes that
 * description to a file (0600) for `blobdisk mount --warm-from` on the next host. */

import fs from 'node:fs/promises';
import path from 'node:path';
import { UsageError } from '../errors';
import { Io, say } from './io';
import { backupCall, checkTimeout, mountPath } from './snapshot';

export interface HandoffArgs {
  readonly mountpoint: string;
  readonly image: string;
  readonly to?: string | undefined;
  readonly timeout?: number | undefined;
}

export async function handoffCommand(args: HandoffArgs, io: Io): Promise<number> {
  const mountpoint = path.resolve(args.mountpoint);
  const image = mountPath(mountpoint, args.image);
  const file = path.resolve(args.to ?? `${path.basename(image)}.handoff.json`);
  // Fail before the drain, not after the lease is gone: the file's directory must take it.
  try {
    await fs.access(path.dirname(file), fs.constants.W_OK);
  } catch {
    throw new UsageError(`cannot write ${file}: its directory is missing or not writable; give another path with --to`);
  }
  const r = (await backupCall(io, mountpoint, `handoff of ${image}`, { op: 'handoff', path: image, ...checkTimeout(args.timeout) })) as { hot: number[] };
  await fs.writeFile(file, `${JSON.stringify(r, null, 1)}\n`, { mode: 0o600 });
  await fs.chmod(file, 0o600);
  io.stdout.write(`${file}\n`);
  say(io, `${image.slice(1)} is drained and its lease released (${r.hot.length} hot grains listed); on the next host: blobdisk mount <mountpoint> --warm-from ${file}`);
  return 0;
}
