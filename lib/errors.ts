/* Typed errors. Every layer below lib/fuse says what went wrong in blobdisk's own terms, a
 * BlobdiskError of one ErrorKind; lib/fuse/errno.ts alone turns a kind into an errno for
 * the kernel, and everything that is not a BlobdiskError into EIO there. Two kinds both
 * become EIO but must never be confused: `unavailable` (Azure could not be reached, did
 * not answer in time, or failed on its side, after our retries: keeping to local state is
 * right) and `failed` (an answer we did not expect, or a bug: nothing may be assumed).
 * Messages never carry secrets: see lib/redact.ts. */

export type ErrorKind =
  /** Nothing by that name, or the blob vanished. */
  | 'not-found'
  /** Something is already there. */
  | 'exists'
  /** Another writer holds the blob's lease, or the image is being moved. */
  | 'busy'
  /** The blob changed in Azure since we read it (its ETag moved). */
  | 'stale'
  /** The image must not be written: it changed elsewhere while this cache held changes,
   *  was deleted or replaced, or its lease was lost. Nothing was overwritten. */
  | 'conflict'
  /** Azure could not be reached, did not answer in time, or failed (5xx), after retries. */
  | 'unavailable'
  /** The cache is full of data not yet uploaded. */
  | 'no-space'
  /** Past a size limit (a page blob ends at 8 TiB). */
  | 'too-large'
  /** A request or an input that cannot be valid. */
  | 'invalid'
  | 'name-too-long'
  /** The mount is read-only, or the blob is of a kind blobdisk only reads. */
  | 'read-only'
  /** Azure refused the credentials or lacks a permission. */
  | 'denied'
  /** Something blobdisk does not do (rename or delete a container...). */
  | 'not-permitted'
  | 'is-directory'
  | 'not-directory'
  | 'not-empty'
  | 'not-supported'
  /** No open file has that handle. */
  | 'bad-handle'
  /** Anything unexpected: an answer we do not understand, or a bug. */
  | 'failed';

export class BlobdiskError extends Error {
  override readonly name = 'BlobdiskError';
  readonly kind: ErrorKind;
  /** `EBADF` is lib/fuse's own name for a bad handle (handles.ts), taken as 'bad-handle'. */
  constructor(kind: ErrorKind | 'EBADF', message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.kind = kind === 'EBADF' ? 'bad-handle' : kind;
  }
}

export function isBlobdiskError(e: unknown): e is BlobdiskError {
  return e instanceof BlobdiskError;
}

/** Whether `e` is a BlobdiskError of one of `kinds`. */
export function isKind(e: unknown, ...kinds: ErrorKind[]): e is BlobdiskError {
  return isBlobdiskError(e) && kinds.includes(e.kind);
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
