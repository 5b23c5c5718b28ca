/* `blobdisk unmount <mountpoint>`: asks the mount through its control socket to unmount
 * and waits until it has. A mount whose process is gone (kill -9) is cleared with
 * umount (root) or fusermount3 -u; one whose process lives but does not answer is left alone, with the
 * command that stops it. */

import fsp from 'node:fs/promises';
import { canonicalMountpoint, controlPidPath, controlRequest, controlSocketPath } from '../control';
import { UsageError, errorMessage } from '../errors';
import { isAlive } from '../pid';
import { mountPoints } from '../preflight';
import { FlushProgress } from '../flusher/flusher';
import { clearMount } from '../fuse/clear';
import { DrainResult } from '../mount';
import { formatSize } from '../units';
import { Io, say } from './io';
import { uploadProgress } from './progress';

const WAIT_MS = 60_000;

async function waitUntilUnmounted(mountpoint: string, ms: number): Promise<boolean> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (!(await mountPoints()).has(mountpoint)) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}

/** The live process that serves `mountpoint`: the one its control pid file names, or one whose
 *  command line is `blobdisk mount <mountpoint>`. */
async function mountProcess(mountpoint: string): Promise<number | undefined> {
  const pattern = new RegExp(`blobdisk.* mount ${mountpoint.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}( |$)`);
  const serves = async (pid: number): Promise<boolean> =>
    pid !== process.pid && isAlive(pid) && pattern.test((await fsp.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0').join(' ').trim());
  // The pid file first; its pid may since belong to another program, hence the command line.
  const recorded = Number((await fsp.readFile(controlPidPath(controlSocketPath(mountpoint)), 'utf8').catch(() => '')).trim());
  if (Number.isInteger(recorded) && recorded > 0 && (await serves(recorded))) return recorded;
  for (const entry of await fsp.readdir('/proc')) {
    if (/^\d+$/.test(entry) && (await serves(Number(entry)))) return Number(entry);
  }
  return undefined;
}

export async function unmountCommand(target: string, io: Io): Promise<number> {
  const mountpoint = canonicalMountpoint(target);
  const progress = uploadProgress(io, 'draining');
  let result: DrainResult;
  try {
    result = (await controlRequest(mountpoint, { op: 'unmount' }, (p) => progress.update(p as FlushProgress))) as DrainResult;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT' && code !== 'ECONNREFUSED') throw new UsageError(`unmounting ${mountpoint} failed: ${errorMessage(e)}`);
    const type = (await mountPoints()).get(mountpoint);
    if (type === undefined) throw new UsageError(`nothing is mounted at ${mountpoint}`);
    if (!type.startsWith('fuse')) throw new UsageError(`${mountpoint} is a ${type} mount, not blobdisk; use umount`);
    const owner = await mountProcess(mountpoint);
    if (owner !== undefined) {
      // Never pull a live mount from under its process: it may hold data not yet uploaded.
      throw new UsageError(
        `the blobdisk process ${owner} serving ${mountpoint} does not answer on its control socket; stop it with kill ${owner} (it uploads what is dirty first), then run blobdisk unmount again`,
      );
    }
    // The blobdisk process is gone: clear the dead mount; its cache keeps whatever was dirty.
    await clearMount(mountpoint);
    say(io, `cleared ${mountpoint}: its blobdisk process was gone`);
    return 0;
  }
  finally {
    progress.stop();
  }
  if (!(await waitUntilUnmounted(mountpoint, WAIT_MS))) {
    throw new UsageError(`${mountpoint} is still mounted after ${WAIT_MS / 1000} s; see the mount's own output`);
  }
  if (!result.drained) {
    say(io, `unmounted ${mountpoint}, but ${formatSize(result.dirtyBytes)} could not be uploaded (${result.reason ?? 'Azure unreachable'}); it uploads at the next mount with the same cache`);
    return 3;
  }
  say(io, `unmounted ${mountpoint}`);
  return 0;
}
