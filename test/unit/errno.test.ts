/* lib/fuse/errno.ts is the only place a failure becomes an errno: every kind has one, and
 * anything that is not a BlobdiskError is EIO. */

import os from 'node:os';
import { BlobdiskError, type ErrorKind } from '../../lib/errors';
import { errnoName, toErrno } from '../../lib/fuse/errno';
import { silentLogger } from '../../lib/log';

const EXPECTED: Record<ErrorKind, string> = {
  'not-found': 'ENOENT', exists: 'EEXIST', busy: 'EBUSY', stale: 'ESTALE', conflict: 'EIO', unavailable: 'EIO',
  'no-space': 'ENOSPC', 'too-large': 'EFBIG', invalid: 'EINVAL', 'name-too-long': 'ENAMETOOLONG', 'read-only': 'EROFS',
  denied: 'EACCES', 'not-permitted': 'EPERM', 'is-directory': 'EISDIR', 'not-directory': 'ENOTDIR', 'not-empty': 'ENOTEMPTY',
  'not-supported': 'ENOTSUP', 'bad-handle': 'EBADF', failed: 'EIO',
};

test.each(Object.entries(EXPECTED))('%s becomes %s', (kind, name) => {
  const e = new BlobdiskError(kind as ErrorKind, 'x');
  expect(errnoName(e)).toBe(name);
  expect(toErrno('op', '/p', e, silentLogger)).toBe(-(os.constants.errno as Record<string, number>)[name]!);
});

test('anything else is EIO: a bug is never mistaken for an answer', () => {
  expect(errnoName(new TypeError('x is undefined'))).toBe('EIO');
  expect(toErrno('op', '/p', 'a string', silentLogger)).toBe(-os.constants.errno.EIO);
});

test("lib/fuse's own name for a bad handle is the kind bad-handle", () => {
  expect(new BlobdiskError('EBADF', 'no such handle').kind).toBe('bad-handle');
});

test.each(['ENOSPC', 'EDQUOT'])('an untyped %s from the local disk is ENOSPC, not EIO: the application sees a full disk', (code) => {
  const e = Object.assign(new Error(`${code}: no space left on device, write`), { code });
  expect(errnoName(e)).toBe('ENOSPC');
  expect(toErrno('write', '/c/disk.img', e, silentLogger)).toBe(-os.constants.errno.ENOSPC);
  expect(errnoName(Object.assign(new Error('x'), { code: 'EBADF' }))).toBe('EIO');
});
