/* Typed errors. The store turns Azure SDK failures into BlobdiskError with an errno name;
 * the FUSE layer turns BlobdiskError into a negative errno (lib/fuse/errno.ts). Everything
 * unknown becomes EIO there. Messages never carry secrets: see lib/redact.ts. */

export type ErrnoName =
  | 'ENOENT' | 'EIO' | 'EACCES' | 'EPERM' | 'EBUSY' | 'EEXIST' | 'EINVAL' | 'EISDIR'
  | 'ENOTDIR' | 'ENOTEMPTY' | 'ENOSPC' | 'EFBIG' | 'EROFS' | 'ENOTSUP' | 'ESTALE'
  | 'ETIMEDOUT' | 'ENAMETOOLONG' | 'EBADF';

export class BlobdiskError extends Error {
  override readonly name = 'BlobdiskError';
  constructor(readonly code: ErrnoName, message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

export function isBlobdiskError(e: unknown): e is BlobdiskError {
  return e instanceof BlobdiskError;
}

/** A user-facing failure of a command: printed as one line, exit code 1 (or `exitCode`). */
export class UsageError extends Error {
  override readonly name = 'UsageError';
  constructor(message: string, readonly exitCode = 1) {
    super(message);
  }
}

export function isUsageError(e: unknown): e is UsageError {
  return e instanceof UsageError;
}

export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
