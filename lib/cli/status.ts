/* `blobdisk status <mountpoint> [--json]`: what a running mount holds and has moved. */

import path from 'node:path';
import { controlRequest } from '../control';
import { UsageError } from '../errors';
import { MountStatus } from '../mount';
import { formatSize } from '../units';
import { Io } from './io';

export async function statusCommand(target: string, json: boolean, io: Io): Promise<number> {
  const mountpoint = path.resolve(target);
  let status: MountStatus;
  try {
    status = (await controlRequest(mountpoint, { op: 'status' })) as MountStatus;
  } catch {
    throw new UsageError(`no blobdisk mount answers at ${mountpoint}; is it mounted?`);
  }
  if (json) {
    io.stdout.write(`${JSON.stringify(status, null, 2)}\n`);
    return 0;
  }
  const percent = (r: number | null): string => (r === null ? '-' : `${(100 * r).toFixed(1)}%`);
  const lines = [
    `mount ${status.mountpoint} (pid ${status.pid})`,
    `cache ${status.cacheDir}: ${formatSize(status.cacheUsedBytes)} of ${formatSize(status.cacheSizeBytes)}, grain ${formatSize(status.grainSize)}`,
    `traffic: ${status.requests} requests, ${formatSize(status.bytesDown)} down, ${formatSize(status.bytesUp)} up; ` +
      `${formatSize(status.dirtyBytes)} waiting for upload; hit ratio ${percent(status.hitRatio)}`,
  ];
  if (status.images.length > 0) lines.push('', 'image\tkind\tsize\tcached\tdirty\toldest dirty\tup\tdown\thit ratio');
  for (const i of status.images) {
    const age = i.oldestDirtySeconds === null ? '-' : `${i.oldestDirtySeconds} s`;
    lines.push(
      [i.path, i.kind, formatSize(i.size), formatSize(i.cachedBytes), formatSize(i.dirtyBytes), age, formatSize(i.bytesUp), formatSize(i.bytesDown), percent(i.hitRatio)].join('\t') +
        (i.conflict ? `\tCONFLICT: ${i.conflict}` : ''),
    );
  }
  io.stdout.write(`${lines.join('\n')}\n`);
  return 0;
}
