/* The control-socket requests of `blobdisk snapshot`, `clone`, `diff` and `rm`, checked and
 * handed to Backups. A request names paths of the mount (/dir/disk.img). */

import { BlobdiskError } from '../errors';
import { Backups } from './backups';
import { COMPARE_CHOICES, type CompareChoice } from './diff';

/** A control request as the socket decoded it (lib/control.ts). */
export interface ControlRequestLike {
  readonly op: string;
  readonly [key: string]: unknown;
}

/** The ops answered here. */
export const BACKUP_OPS = ['snapshot', 'snapshot-delete', 'clone', 'diff', 'rm'] as const;

function text(request: ControlRequestLike, key: string): string {
  const v = request[key];
  if (typeof v !== 'string' || v === '') throw new BlobdiskError('invalid', `the ${request.op} request lacks ${key}`);
  return v;
}

/** Answers `request` when it is one of BACKUP_OPS; undefined for any other op. */
export function backupRequest(
  backups: Backups,
  request: ControlRequestLike,
  progress: (p: unknown) => void,
  defaultStallMs: number,
): Promise<unknown> | undefined {
  const stallMs = typeof request.timeoutMs === 'number' && request.timeoutMs > 0 ? request.timeoutMs : defaultStallMs;
  switch (request.op) {
    case 'snapshot':
      return backups.snapshot(text(request, 'path'), typeof request.name === 'string' ? request.name : undefined, stallMs, progress);
    case 'snapshot-delete':
      return backups.deleteSnapshot(text(request, 'path'), text(request, 'snapshot'));
    case 'clone':
      return backups.clone(text(request, 'source'), text(request, 'path'), stallMs, progress);
    case 'diff': {
      const compare = typeof request.compare === 'string' ? request.compare : 'auto';
      if (!(COMPARE_CHOICES as readonly string[]).includes(compare)) throw new BlobdiskError('invalid', `--compare takes ${COMPARE_CHOICES.join(', ')}`);
      return backups.diff(text(request, 'path'), text(request, 'since'), compare as CompareChoice, stallMs, progress);
    }
    case 'rm':
      return backups.remove(text(request, 'path'), request.withSnapshots === true);
    default:
      return undefined;
  }
}
