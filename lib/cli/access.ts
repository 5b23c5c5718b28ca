/* Who may use the mount and what `stat` shows, as rclone mount names it: --allow-other,
 * --uid, --gid, --file-mode, --dir-mode. Azure keeps no owners or modes, so these are the
 * mount's answer for every file; the kernel enforces them (default_permissions). User and
 * group names resolve through /etc/passwd and /etc/group, read once before mounting. */

import fs from 'node:fs';
import { DEFAULT_DIR_MODE, DEFAULT_FILE_MODE, type AccessOptions } from '../config';
import { UsageError } from '../errors';



/** Reads a system account file; a missing file reads as empty. */
export type AccountFiles = (file: '/etc/passwd' | '/etc/group') => string;

export const systemAccountFiles: AccountFiles = (file) => {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return '';
  }
};

/** The id of `text`: a decimal number, or a name looked up in a passwd/group-style file. */
function idOf(flag: string, text: string, table: string): number {
  if (/^\d+$/.test(text)) {
    const id = Number(text);
    if (id <= 0xffffffff) return id;
  }
  for (const line of table.split('\n')) {
    const fields = line.split(':');
    if (fields[0] === text && fields[2] !== undefined && /^\d+$/.test(fields[2])) return Number(fields[2]);
  }
  const what = flag === 'uid' ? 'user' : 'group';
  throw new UsageError(`--${flag} ${JSON.stringify(text)} is neither a number nor a ${what} of this machine; give e.g. --${flag} ${flag === 'uid' ? 'libvirt-qemu' : 'kvm'} or --${flag} 64055`);
}

/** Permission bits from an octal text like 0644, 644 or 0o644. */
export function parseMode(flag: string, text: string): number {
  const m = /^(?:0o?)?([0-7]{1,4})$/i.exec(text.trim());
  const mode = m?.[1] !== undefined ? parseInt(m[1], 8) : NaN;
  if (!(mode >= 0 && mode <= 0o777)) {
    throw new UsageError(`--${flag} ${JSON.stringify(text)} is not a permission mode; give octal bits like 0644 (files) or 0755 (directories)`);
  }
  return mode;
}

export interface AccessArgs {
  allowOther?: boolean | undefined;
  uid?: string | number | undefined;
  gid?: string | number | undefined;
  fileMode?: string | number | undefined;
  dirMode?: string | number | undefined;
}

/** Validates the access flags; ids default to the mounting user's. */
export function parseAccess(args: AccessArgs, self: { uid: number; gid: number }, files: AccountFiles = systemAccountFiles): AccessOptions {
  return Object.freeze({
    allowOther: args.allowOther ?? false,
    uid: args.uid === undefined ? self.uid : idOf('uid', String(args.uid), files('/etc/passwd')),
    gid: args.gid === undefined ? self.gid : idOf('gid', String(args.gid), files('/etc/group')),
    fileMode: args.fileMode === undefined ? DEFAULT_FILE_MODE : parseMode('file-mode', String(args.fileMode)),
    dirMode: args.dirMode === undefined ? DEFAULT_DIR_MODE : parseMode('dir-mode', String(args.dirMode)),
  });
}
