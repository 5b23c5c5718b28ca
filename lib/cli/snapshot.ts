/* `blobdisk snapshot <mountpoint> <image> [--name N]`: flushes the image through the running
 * mount and takes an Azure snapshot of it, which then shows read-only under
 * <dir>/.snapshots/<image>/<name or UTC time>. `--delete <mountpoint> <image> <snapshot>`
 * deletes one. The mount does the work (it holds the credentials and the dirty data); this
 * file also holds what clone, diff and rm share: image paths and the request. */

import path from 'node:path';
import { controlRequest } from '../control';
import { UsageError, errorMessage } from '../errors';
import type { FlushProgress } from '../flusher/flusher';
import { Io, say } from './io';
import { uploadProgress } from './progress';

/** `file` as a path of the mount at `mountpoint` (/dir/disk.img): an absolute path must lie
 *  inside the mountpoint; a relative one is taken relative to it. */
export function mountPath(mountpoint: string, file: string, what = 'image'): string {
  const rel = path.isAbsolute(file) ? path.relative(mountpoint, file) : path.normalize(file);
  if (rel === '' || rel === '.' || rel.startsWith('..') || path.isAbsolute(rel)) {
    throw new UsageError(`${file} is not inside ${mountpoint}; give the ${what} as a path in the mount, e.g. vms/disk.img`);
  }
  return `/${rel.replace(/\/+$/, '')}`;
}

/** Sends one backup request to the mount at `mountpoint`, showing flush progress on stderr. */
export async function backupCall(io: Io, mountpoint: string, what: string, request: { op: string; [key: string]: unknown }, onOther: (p: unknown) => void = () => undefined): Promise<unknown> {
  const progress = uploadProgress(io, 'flushing');
  try {
    return await controlRequest(mountpoint, request, (p) => {
      if (typeof p === 'object' && p !== null && 'dirtyBytes' in p) progress.update(p as FlushProgress);
      else onOther(p);
    });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ECONNREFUSED') throw new UsageError(`no blobdisk mount answers at ${mountpoint}; is it mounted?`);
    throw new UsageError(`${what} failed: ${errorMessage(e)}`);
  } finally {
    progress.stop();
  }
}

export function checkTimeout(timeoutSeconds: number | undefined): { timeoutMs?: number } {
  if (timeoutSeconds === undefined) return {};
  if (!(timeoutSeconds > 0)) throw new UsageError('--timeout takes seconds, e.g. 60');
  return { timeoutMs: timeoutSeconds * 1000 };
}

export interface SnapshotArgs {
  readonly mountpoint: string;
  readonly image: string;
  readonly snapshot?: string | undefined;
  readonly name?: string | undefined;
  readonly delete?: boolean | undefined;
  readonly timeout?: number | undefined;
  readonly json?: boolean | undefined;
}

export async function snapshotCommand(args: SnapshotArgs, io: Io): Promise<number> {
  const mountpoint = path.resolve(args.mountpoint);
  const image = mountPath(mountpoint, args.image);
  if (args.delete === true) {
    if (args.snapshot === undefined) throw new UsageError('snapshot --delete needs the snapshot: blobdisk snapshot --delete <mountpoint> <image> <name or time>', 2);
    const r = (await backupCall(io, mountpoint, `deleting snapshot ${args.snapshot} of ${image}`, { op: 'snapshot-delete', path: image, snapshot: args.snapshot })) as { snapshot: string; entry: string };
    if (args.json === true) io.stdout.write(`${JSON.stringify(r)}\n`);
    say(io, `deleted snapshot ${r.entry} of ${image.slice(1)} (${r.snapshot})`);
    return 0;
  }
  if (args.snapshot !== undefined) throw new UsageError(`unexpected argument ${args.snapshot}; name a new snapshot with --name`, 2);
  const request = { op: 'snapshot', path: image, ...(args.name !== undefined ? { name: args.name } : {}), ...checkTimeout(args.timeout) };
  const r = (await backupCall(io, mountpoint, `snapshot of ${image}`, request)) as { snapshot: string; entry: string; path: string };
  if (args.json === true) io.stdout.write(`${JSON.stringify({ ...r, path: path.join(mountpoint, r.path) })}\n`);
  else io.stdout.write(`${path.join(mountpoint, r.path)}\n`);
  say(io, `took snapshot ${r.entry} of ${image.slice(1)} (${r.snapshot})`);
  return 0;
}
