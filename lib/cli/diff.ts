/* `blobdisk diff <mountpoint> <image> --since <snapshot> [--json] [--compare M]`: the byte
 * ranges of an image that changed since one of its snapshots, for incremental backups,
 * after flushing the image. The answer says which method found them (lib/namespace/diff.ts):
 * for a page blob Azure's page-range diff (service), the two page-range listings (listings),
 * or those plus a byte comparison of the ranges both hold (bytes; the default on Azurite);
 * for a block blob its committed block lists (blocks), or bytes. */

import path from 'node:path';
import { formatSize } from '../units';
import { Io, say } from './io';
import { backupCall, checkTimeout, mountPath } from './snapshot';

interface Range {
  start: number;
  end: number;
}

interface Report {
  since: string;
  sinceEntry: string;
  method: string;
  size: number;
  sinceSize: number;
  changed: Range[];
  cleared: Range[];
  unverified: Range[];
  bytesCompared: number;
}

export interface DiffArgs {
  readonly mountpoint: string;
  readonly image: string;
  readonly since: string;
  readonly compare?: string | undefined;
  readonly json?: boolean | undefined;
  readonly timeout?: number | undefined;
}

const bytes = (ranges: readonly Range[]): number => ranges.reduce((n, r) => n + r.end - r.start, 0);

export async function diffCommand(args: DiffArgs, io: Io): Promise<number> {
  const mountpoint = path.resolve(args.mountpoint);
  const image = mountPath(mountpoint, args.image);
  let last = 0;
  const r = (await backupCall(
    io,
    mountpoint,
    `diff of ${image}`,
    { op: 'diff', path: image, since: args.since, compare: args.compare ?? 'auto', ...checkTimeout(args.timeout) },
    (p) => {
      const { compared, of } = p as { compared: number; of: number };
      if (Date.now() - last < 1000) return;
      last = Date.now();
      say(io, `comparing: ${formatSize(compared)} of ${formatSize(of)}`);
    },
  )) as Report;
  if (args.json === true) {
    io.stdout.write(`${JSON.stringify({ image: image.slice(1), ...r })}\n`);
  } else {
    const lines: string[] = [];
    for (const [kind, ranges] of [['changed', r.changed], ['cleared', r.cleared], ['unverified', r.unverified]] as const) {
      for (const x of ranges) lines.push(`${kind} ${x.start} ${x.end - x.start}`);
    }
    io.stdout.write(lines.map((l) => `${l}\n`).join(''));
  }
  const unverified = r.unverified.length > 0 ? `, ${r.unverified.length} unverified (${formatSize(bytes(r.unverified))}: held by both, not compared; a backup must copy them)` : '';
  say(
    io,
    `${image.slice(1)} since ${r.sinceEntry} (${r.since}), by ${r.method}: ${r.changed.length} changed ranges (${formatSize(bytes(r.changed))}), ` +
      `${r.cleared.length} cleared (${formatSize(bytes(r.cleared))})${unverified}; size ${r.sinceSize} -> ${r.size}`,
  );
  return 0;
}
