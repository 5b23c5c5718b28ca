/* `blobdisk flush <mountpoint> [path]`: blocks until everything written so far is in Azure. */

import path from 'node:path';
import { controlRequest } from '../control';
import { UsageError, errorMessage } from '../errors';
import { FlushProgress } from '../flusher/flusher';
import { Io, say } from './io';
import { uploadProgress } from './progress';

export async function flushCommand(target: string, file: string | undefined, io: Io): Promise<number> {
  const mountpoint = path.resolve(target);
  const only = file === undefined ? undefined : path.relative(mountpoint, path.resolve(file));
  if (only !== undefined && (only.startsWith('..') || only === '')) throw new UsageError(`${file} is not a file inside ${mountpoint}`);
  const progress = uploadProgress(io, 'flushing');
  try {
    await controlRequest(mountpoint, { op: 'flush', ...(only !== undefined ? { path: `/${only}` } : {}) }, (p) => progress.update(p as FlushProgress));
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
