/* `blobdisk recover <mountpoint> <image> (--to <new-name> | --discard)`: resolves an image
 * whose local changes cannot go to Azure (the blob changed behind our back, was deleted,
 * or Azure refuses the uploads). --to first saves the local version as a new blob in the
 * same container; both then drop the local changes, so the mount follows Azure's blob.
 * The running mount does the work; this asks it over the control socket and prints one line. */

import path from 'node:path';
import { controlRequest } from '../control';
import { UsageError, errorMessage } from '../errors';
import type { RecoverResult } from '../image/registry';
import { blobComponentProblem } from '../namespace/paths';
import { formatSize } from '../units';
import { Io, say } from './io';

/** Why `name` cannot be the new blob's name, or undefined when it can. */
function nameProblem(name: string): string | undefined {
  if (name === '' || name.startsWith('/') || name.endsWith('/')) return 'is not a blob name (no leading or trailing /)';
  if (name.length > 1024) return 'is longer than the 1024 characters of a blob name';
  for (const part of name.split('/')) {
    if (part === '' || part === '.' || part === '..') return "has an empty, '.' or '..' part";
    const why = blobComponentProblem(part);
    if (why !== undefined) return why;
  }
  return undefined;
}

export async function recoverCommand(target: string, image: string, io: Io, options: { to?: string; discard?: boolean }): Promise<number> {
  const { to, discard = false } = options;
  if ((to === undefined) === !discard) throw new UsageError('give either --to <new-name> (save the local version as a new blob, then drop it here) or --discard (drop it)', 2);
  if (to !== undefined) {
    const why = nameProblem(to);
    if (why !== undefined) throw new UsageError(`--to ${to} ${why}; give a new blob name in the image's container, e.g. --to disk-local.img`, 2);
  }
  const mountpoint = path.resolve(target);
  const file = path.relative(mountpoint, path.resolve(mountpoint, image));
  if (file === '' || file.startsWith('..')) throw new UsageError(`${image} is not a file inside ${mountpoint}`, 2);
  let result: RecoverResult;
  try {
    result = (await controlRequest(mountpoint, { op: 'recover', path: `/${file}`, ...(to !== undefined ? { to } : {}) })) as RecoverResult;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ECONNREFUSED') throw new UsageError(`no blobdisk mount answers at ${mountpoint}; is it mounted?`);
    throw new UsageError(`recover of ${file} failed: ${errorMessage(e)}`);
  }
  const what = `${formatSize(result.dirtyBytes)} not yet in Azure`;
  const after = result.gone ? `${file} no longer exists in Azure and is gone from the mount` : `${file} now shows Azure's version`;
  switch (result.outcome) {
    case 'nothing':
      say(io, `${file} has no local changes and no conflict: nothing to recover`);
      break;
    case 'saved':
      say(io, `saved the local version of ${file} (${what}) as ${to ?? ''} in the same container; ${after}`);
      break;
    case 'discarded':
      say(io, `dropped the local changes of ${file} (${what}); ${after}`);
      break;
  }
  return 0;
}
