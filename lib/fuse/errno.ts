/* The one place a failure becomes an errno for the kernel: a BlobdiskError carries its
 * errno name; anything else is a bug or an unexpected failure and becomes EIO. Each
 * failure is logged once as "<op> <path> failed: <code>". */

import os from 'node:os';
import { errorMessage, isBlobdiskError } from '../errors';
import { Logger } from '../log';

/** Expected outcomes that are not worth a warning (a shell probing for files, say). */
const QUIET = new Set(['ENOENT', 'EEXIST', 'ENOTEMPTY', 'EROFS']);

export function toErrno(op: string, path: string, e: unknown, log: Logger): number {
  const code = isBlobdiskError(e) ? e.code : 'EIO';
  const line = `${op} ${path} failed: ${code}${isBlobdiskError(e) ? ` (${e.message})` : ` (${errorMessage(e)})`}`;
  if (QUIET.has(code)) log.debug(line);
  else log.warn(line);
  const errno = (os.constants.errno as Record<string, number | undefined>)[code];
  return -(errno ?? os.constants.errno.EIO);
}
