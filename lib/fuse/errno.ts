/* The one place a failure becomes an errno for the kernel: a BlobdiskError's kind maps to
 * one errno by ERRNO below; a full local disk (ENOSPC, EDQUOT from the cache's files) that
 * reached here untyped is ENOSPC, so the application sees a full disk, not a broken one;
 * anything else is a bug or an unexpected failure and becomes EIO. Each failure is logged once as "<op> <path> failed: <errno> (<kind>: <message>)". */

import os from 'node:os';
import { ErrorKind, errorMessage, isBlobdiskError } from '../errors';
import { Logger } from '../log';

const ERRNO: Readonly<Record<ErrorKind, string>> = {
  'not-found': 'ENOENT',
  exists: 'EEXIST',
  busy: 'EBUSY',
  stale: 'ESTALE',
  conflict: 'EIO',
  unavailable: 'EIO',
  'no-space': 'ENOSPC',
  'too-large': 'EFBIG',
  invalid: 'EINVAL',
  'name-too-long': 'ENAMETOOLONG',
  'read-only': 'EROFS',
  denied: 'EACCES',
  'not-permitted': 'EPERM',
  'is-directory': 'EISDIR',
  'not-directory': 'ENOTDIR',
  'not-empty': 'ENOTEMPTY',
  'not-supported': 'ENOTSUP',
  'bad-handle': 'EBADF',
  failed: 'EIO',
};

/** Expected outcomes that are not worth a warning (a shell probing for files, say). */
const QUIET = new Set<ErrorKind>(['not-found', 'exists', 'not-empty', 'read-only']);

/** Untyped local disk errors that keep their meaning. */
const LOCAL: Readonly<Record<string, string>> = { ENOSPC: 'ENOSPC', EDQUOT: 'ENOSPC' };

/** The errno name a failure becomes. */
export function errnoName(e: unknown): string {
  if (isBlobdiskError(e)) return ERRNO[e.kind] ?? 'EIO';
  const code = typeof e === 'object' && e !== null ? (e as { code?: unknown }).code : undefined;
  return (typeof code === 'string' ? LOCAL[code] : undefined) ?? 'EIO';
}

export function toErrno(op: string, path: string, e: unknown, log: Logger): number {
  const code = errnoName(e);
  const line = `${op} ${path} failed: ${code}${isBlobdiskError(e) ? ` (${e.kind}: ${e.message})` : ` (${errorMessage(e)})`}`;
  if (isBlobdiskError(e) && QUIET.has(e.kind)) log.debug(line);
  else log.warn(line);
  const errno = (os.constants.errno as Record<string, number | undefined>)[code];
  return -(errno ?? os.constants.errno.EIO);
}
