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
  const t = status.totals;
  const lookups = t.hits + t.misses;
  const lines = [
    `mount ${status.mountpoint} (pid ${status.pid})`,
    `cache ${status.cacheDir}: ${formatSize(status.cacheUsedBytes)} of ${formatSize(status.cacheSizeBytes)}, grain ${formatSize(status.grainSize)}`,
    `traffic: ${status.requests} requests, ${formatSize(status.bytesDown)} down; hit ratio ${lookups ? ((100 * t.hits) / lookups).toFixed(1) : '-'}%`,
  ];
  for (const image of status.images) {
    lines.push(`  ${image.path}  ${image.kind}  size ${formatSize(image.size)}  cached ${formatSize(image.cachedBytes)}  down ${formatSize(image.counters.bytesDown)}`);
  }
  io.stdout.write(`${lines.join('\n')}\n`);
  return 0;
}
