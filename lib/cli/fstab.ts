/* `mount -t fuse.blobdisk SOURCE DIR -o OPTIONS`, and so an /etc/fstab line, runs
 * /sbin/mount.fuse.blobdisk (bin/mount.fuse.blobdisk): this turns its arguments into
 * `blobdisk mount DIR --daemon ...`. SOURCE is the container to mount as the root, or
 * `blobdisk` for all containers. Each option is a mount flag, with `_` or `-` (allow_other,
 * cache-dir=/var/cache/blobdisk, config=/etc/blobdisk.yaml); `ro` means --read-only; the
 * generic options mount(8) and systemd act on themselves (defaults, noauto, _netdev,
 * nofail, x-systemd.*, ...) are left out. */

import { UsageError, isUsageError } from '../errors';
import { MOUNT_FLAGS } from './flags';
import { Io, say } from './io';
import { main } from './main';

/** Options of mount(8), fstab and systemd that are not blobdisk's to act on. */
const GENERIC = new Set([
  'defaults', 'rw', 'auto', 'noauto', 'user', 'users', 'nouser', 'owner', 'group', '_netdev', 'nofail',
  'exec', 'noexec', 'suid', 'nosuid', 'dev', 'nodev', 'async', 'sync', 'atime', 'noatime', 'relatime',
  'norelatime', 'strictatime', 'diratime', 'nodiratime', 'lazytime', 'silent', 'loud', 'bg', 'fg',
]);

/** Flags a mount line may carry besides the mount flags. */
const EXTRA = new Set(['config']);

/** The source that means "every container of the account". */
export const ALL_CONTAINERS = 'blobdisk';

/** mount(8)'s arguments (SOURCE DIR [-sfnv] [-o OPTIONS]) → blobdisk's argv. */
export function fstabToArgv(args: readonly string[]): string[] {
  const positional: string[] = [];
  const options: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i] ?? '';
    if (a === '-o') options.push(...(args[++i] ?? '').split(','));
    else if (a.startsWith('-o')) options.push(...a.slice(2).split(','));
    else if (/^-[sfnvN]+$/.test(a)) continue; // sloppy, fake, no-mtab, verbose: nothing for us to do
    else positional.push(a);
  }
  const [source, dir] = positional;
  if (source === undefined || dir === undefined || positional.length > 2) {
    throw new UsageError('usage: mount.fuse.blobdisk CONTAINER|blobdisk MOUNTPOINT [-o OPTIONS]; in /etc/fstab: vms /mnt/blobs fuse.blobdisk allow_other,_netdev 0 0');
  }
  const argv = ['mount', dir, '--daemon'];
  if (source !== ALL_CONTAINERS) argv.push('--container', source);
  for (const option of options) {
    if (option === '') continue;
    const eq = option.indexOf('=');
    const key = (eq < 0 ? option : option.slice(0, eq)).replace(/_/g, '-').replace(/^-netdev$/, '_netdev');
    const value = eq < 0 ? undefined : option.slice(eq + 1);
    if (GENERIC.has(key) || GENERIC.has(option) || key.startsWith('x-') || key === 'comment') continue;
    if (key === 'ro') {
      argv.push('--read-only');
      continue;
    }
    const flag = MOUNT_FLAGS.find((f) => f.name === key);
    if (flag === undefined && !EXTRA.has(key)) {
      throw new UsageError(`unknown option ${JSON.stringify(key)} in the mount options; use blobdisk mount's flag names, e.g. allow_other or cache_dir=/var/cache/blobdisk`);
    }
    if (value === undefined) {
      if (flag?.type !== 'boolean') throw new UsageError(`the mount option ${key} needs a value, e.g. ${key}=...`);
      argv.push(`--${key}`);
    } else if (flag?.type === 'array') {
      argv.push(`--${key}`, ...value.split(':'));
    } else {
      argv.push(`--${key}`, value);
    }
  }
  return argv;
}

/** The entry point of bin/mount.fuse.blobdisk: translates, then runs `blobdisk mount --daemon`. */
export async function mountHelperMain(args: readonly string[], io: Io = { stdout: process.stdout, stderr: process.stderr, env: process.env }): Promise<number> {
  let argv: string[];
  try {
    argv = fstabToArgv(args);
  } catch (e) {
    if (!isUsageError(e)) throw e;
    say(io, e.message);
    return 1;
  }
  return main(argv, io);
}
