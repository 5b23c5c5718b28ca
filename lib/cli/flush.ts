/* `blobdisk flush <mountpoint> [path] [--timeout SECONDS]`: blocks until everything written
 * so far is in Azure; gives up, saying what is left, when nothing could be uploaded for
 * --timeout seconds (default: the mount's --drain-timeout), or at once when Azure refuses
 * the uploads for a reason retrying cannot fix. */

import path from 'node:path';
import { controlRequest } from '../control';
import { UsageError, errorMessage } from '../errors';
import { FlushProgress } from '../flusher/flusher';
import { Io, say } from './io';
import { uploadProgress } from './progress';

export async function flushCommand(target: string, file: string | undefined, io: Io, timeoutSeconds?: number): Promise<number> {
  if (timeoutSeconds !== undefined && !(timeoutSeconds > 0)) throw new UsageError('--timeout takes seconds, e.g. 60');
  const mountpoint = path.resolve(target);
  const only = file === undefined ? undefined : path.relative(mountpoint, path.resolve(file));
  if (only !== undefined && (only.startsWith('..') || only === '')) throw new UsageError(`${file} is not a file inside ${mountpoint}`);
  const progress = uploadProgress(io, 'flushing');
  try {
    const request = { op: 'flush', ...(only !== undefined ? { path: `/${only}` } : {}), ...(timeoutSeconds !== undefined ? { timeoutMs: timeoutSeconds * 1000 } : {}) };
    await controlRequest(mountpoint, request, (p) => progress.update(p as FlushProgress));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ECONNREFUSED') throw new UsageError(`no blobdisk mount answers at ${mountpoint}; is it mounted?`);
    throw new UsageError(`flush of ${mountpoint} failed: ${errorMessage(e)}`);
  } finally {
    progress.stop();
  }
  say(io, `everything written to ${only ?? mountpoint} is in Azure`);
  return 0;
}
