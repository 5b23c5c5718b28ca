/* Checks before anything is mounted, each failing with one line that says what to do:
 * the mountpoint must be an existing, empty-of-mounts directory; the cache directory must
 * be writable and have room for a few grains. */

import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { AccessOptions } from './config';
import { UsageError } from './errors';
import { formatSize } from './units';

/** One mount of this machine: where, of which type, on which device (MAJOR:MINOR). */
export interface MountEntry {
  readonly type: string;
  readonly device: string;
}

/** Mount points of this machine, from /proc/self/mountinfo (octal escapes decoded); a path
 *  mounted over again names the topmost mount. */
export async function mountTable(): Promise<Map<string, MountEntry>> {
  const text = await fsp.readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  const out = new Map<string, MountEntry>();
  for (const line of text.split('\n')) {
    const fields = line.split(' ');
    const sep = fields.indexOf('-');
    const [device, mnt] = [fields[2], fields[4]];
    const type = fields[sep + 1];
    if (mnt === undefined || device === undefined || sep < 0 || type === undefined) continue;
    out.set(mnt.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))), { type, device });
  }
  return out;
}

/** Mount points of this machine and their types (see mountTable). */
export async function mountPoints(): Promise<Map<string, string>> {
  return new Map([...(await mountTable())].map(([mnt, e]) => [mnt, e.type]));
}

export async function checkMountpoint(mountpoint: string): Promise<void> {
  let stat: fs.Stats;
  try {
    stat = await fsp.stat(mountpoint);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new UsageError(`mountpoint ${mountpoint} does not exist; create it first: mkdir -p ${mountpoint}`);
    if (code === 'ENOTCONN') {
      throw new UsageError(`mountpoint ${mountpoint} is a dead FUSE mount (transport endpoint not connected); clear it with: blobdisk unmount ${mountpoint}`);
    }
    throw new UsageError(`cannot use mountpoint ${mountpoint} (${code}); check that it exists and is readable`);
  }
  if (!stat.isDirectory()) throw new UsageError(`mountpoint ${mountpoint} is not a directory; give an empty directory`);
  const mounted = (await mountPoints()).get(mountpoint);
  if (mounted !== undefined) {
    throw new UsageError(`${mountpoint} is already mounted (${mounted}); unmount it first (blobdisk unmount ${mountpoint}) or pick another directory`);
  }
  if ((await fsp.readdir(mountpoint)).length > 0) {
    throw new UsageError(`mountpoint ${mountpoint} is not empty; give an empty directory so nothing in it gets hidden`);
  }
}

export async function checkCacheDir(dir: string, minBytes: number): Promise<void> {
  try {
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
    const probe = path.join(dir, `.probe-${process.pid}`);
    await fsp.writeFile(probe, 'blobdisk');
    await fsp.rm(probe);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'error';
    throw new UsageError(`cache directory ${dir} is not writable (${code}); give --cache-dir a directory you can write to`);
  }
  const st = await fsp.statfs(dir);
  const free = st.bavail * st.bsize;
  if (free < minBytes) {
    throw new UsageError(`cache directory ${dir} has only ${formatSize(free)} free; blobdisk needs at least ${formatSize(minBytes)} there (free space, or give another --cache-dir)`);
  }
}

/** A warning when an existing directory of blobdisk's (the cache, the data dir) is open to
 *  other users: the grain files hold the disks' data. */
export async function openToOthers(dir: string): Promise<string | undefined> {
  const st = await fsp.stat(dir).catch(() => undefined);
  if (st === undefined || (st.mode & 0o077) === 0) return undefined;
  return `${dir} can be read by other users (mode 0${(st.mode & 0o777).toString(8)}); blobdisk keeps disk data there: chmod 700 ${dir}`;
}

/** A user other than root may only pass allow_other when /etc/fuse.conf says user_allow_other. */
export function checkAllowOther(access: Pick<AccessOptions, 'allowOther'>, uid: number, fuseConf: string): void {
  if (!access.allowOther || uid === 0) return;
  if (fuseConf.split('\n').some((l) => l.trim() === 'user_allow_other')) return;
  throw new UsageError('--allow-other needs the line user_allow_other in /etc/fuse.conf when not mounting as root; add it (as root) or mount as root');
}
