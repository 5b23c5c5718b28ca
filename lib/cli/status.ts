/* `blobdisk status <mountpoint> [--json] [--watch [SECONDS]]`: what a running mount holds and
 * has moved; --watch redraws it every few seconds (on a terminal in place, otherwise one
 * table after the other) until Ctrl-C or until the mount ends. */

import path from 'node:path';
import { controlRequest } from '../control';
import { UsageError, isUsageError } from '../errors';
import { MountStatus } from '../mount';
import { formatSize } from '../units';
import { Io, say } from './io';

async function fetchStatus(mountpoint: string): Promise<MountStatus> {
  try {
    return (await controlRequest(mountpoint, { op: 'status' })) as MountStatus;
  } catch (e) {
    if (isUsageError(e)) throw e;
    throw new UsageError(`no blobdisk mount answers at ${mountpoint}; is it mounted?`);
  }
}

export async function statusCommand(target: string, json: boolean, io: Io, watchSeconds?: number): Promise<number> {
  const mountpoint = path.resolve(target);
  const render = (status: MountStatus): string => (json ? `${JSON.stringify(status, null, 2)}\n` : table(status));
  if (watchSeconds === undefined) {
    io.stdout.write(render(await fetchStatus(mountpoint)));
    return 0;
  }
  if (!(watchSeconds > 0)) throw new UsageError('--watch takes the seconds between refreshes, e.g. --watch 2');
  const tty = (io.stdout as NodeJS.WriteStream).isTTY === true;
  let stopped = false;
  let wake: () => void = () => undefined;
  const onInt = (): void => {
    stopped = true;
    wake();
  };
  process.on('SIGINT', onInt);
  try {
    io.stdout.write(render(await fetchStatus(mountpoint)));
    while (!stopped) {
      await new Promise<void>((resolve) => {
        wake = resolve;
        setTimeout(resolve, watchSeconds * 1000);
      });
      if (stopped) break;
      let status: MountStatus;
      try {
        status = await fetchStatus(mountpoint);
      } catch {
        say(io, `the mount at ${mountpoint} no longer answers; it has ended`);
        return 0;
      }
      io.stdout.write(tty ? `\x1b[H\x1b[2J${render(status)}` : `\n${new Date().toISOString()}\n${render(status)}`);
    }
    return 0;
  } finally {
    process.off('SIGINT', onInt);
  }
}

function table(status: MountStatus): string {
  const percent = (r: number | null): string => (r === null ? '-' : `${(100 * r).toFixed(1)}%`);
  const lines = [
    `mount ${status.mountpoint} (pid ${status.pid})`,
    `cache ${status.cacheDir}: ${formatSize(status.cacheUsedBytes)} of ${formatSize(status.cacheSizeBytes)}, grain ${formatSize(status.grainSize)}`,
    `traffic: ${status.requests} requests, ${formatSize(status.bytesDown)} down, ${formatSize(status.bytesUp)} up; ` +
      `${formatSize(status.dirtyBytes)} waiting for upload; hit ratio ${percent(status.hitRatio)}`,
  ];
  // Absent from the answer of an older mount.
  if (status.native) lines.push(`served from cached grains without JavaScript: ${status.native.reads} reads, ${status.native.writes} writes`);
  if (status.azureUnreachableSince !== null) {
    const since = Math.round((Date.now() - Date.parse(status.azureUnreachableSince)) / 1000);
    lines.push(`Azure unreachable since ${status.azureUnreachableSince} (${since} s); ${formatSize(status.dirtyBytes)} wait in the cache for it`);
  }
  for (const name of status.unopened ?? []) lines.push(`${name} holds data not yet uploaded but cannot be opened: see blobdisk recover --help`);
  if (status.images.length > 0) lines.push('', 'image\tkind\tsize\tcached\tdirty\toldest dirty\tup\tdown\thit ratio\tlease');
  for (const i of status.images) {
    const age = i.oldestDirtySeconds === null ? '-' : `${i.oldestDirtySeconds} s`;
    lines.push(
      [i.path, i.kind, formatSize(i.size), formatSize(i.cachedBytes), formatSize(i.dirtyBytes), age, formatSize(i.bytesUp), formatSize(i.bytesDown), percent(i.hitRatio), i.lease].join('\t') +
        (i.lastCheckpoint !== null && i.lastCheckpoint !== undefined ? `\tlast checkpoint ${i.lastCheckpoint}` : '') +
        (i.conflict ? `\tCONFLICT: ${i.conflict}` : '') +
        (i.uploadsStopped ? `\tUPLOADS STOPPED: ${i.uploadsStopped}` : '') +
        (i.prefetch ? `\tprefetch ${i.prefetch.done} of ${i.prefetch.total} grains (${i.prefetch.fetched} fetched, ${i.prefetch.state}${i.prefetch.reason !== undefined ? `: ${i.prefetch.reason}` : ''})` : ''),
    );
  }
  return `${lines.join('\n')}\n`;
}
