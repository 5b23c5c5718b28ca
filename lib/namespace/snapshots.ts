/* The read-only `.snapshots` tree: the Azure snapshots of the images of a directory show as
 * files under <dir>/.snapshots/<image>/<entry>, listed from Azure (so snapshots other tools
 * took show too) and trusted for attrTtlMs like any listing. An entry is named after the
 * snapshot's blobdisk name (metadata blobdisk_snapshot, made safe for a file name) or else
 * its UTC time, Azure's id; names are unique per image (a later one gets ~2, ~3...). A
 * snapshot opens as an Image bound to the snapshot, so it reads through the same cache,
 * read-ahead and sparse page ranges as the image itself; the namespace refuses every write. */

import { BlobdiskError } from '../errors';
import type { Clock } from '../clock';
import type { Image } from '../image/image';
import type { Images } from '../image/registry';
import type { BlobRef, BlobStore, SnapshotInfo } from '../store/types';
import type { Entry } from './listings';
import type { Location } from './paths';
import { SNAPSHOT_NAME_KEY } from '../remote/checkpoint';

export const SNAPSHOTS_DIR = '.snapshots';
/** Metadata key of a snapshot's name given with `blobdisk snapshot --name` (checkpoints name theirs too). */
export { SNAPSHOT_NAME_KEY } from '../remote/checkpoint';

/** A path inside a `.snapshots` tree: the tree itself, one image's snapshots, or one snapshot. */
export interface SnapshotPath {
  readonly container: string;
  /** The directory the tree belongs to ('' for the container root). */
  readonly dir: string;
  readonly image?: string;
  readonly entry?: string;
  /** Components past the entry: nothing is there. */
  readonly deeper: boolean;
}

/** Where `loc` points in a `.snapshots` tree, or undefined outside one. */
export function snapshotPath(loc: Location): SnapshotPath | undefined {
  if (loc.container === undefined) return undefined;
  const parts = loc.name === '' ? [] : loc.name.split('/');
  const at = parts.indexOf(SNAPSHOTS_DIR);
  if (at < 0) return undefined;
  const [image, entry] = parts.slice(at + 1);
  return {
    container: loc.container,
    dir: parts.slice(0, at).join('/'),
    ...(image !== undefined ? { image } : {}),
    ...(entry !== undefined ? { entry } : {}),
    deeper: parts.length > at + 3,
  };
}

/** A snapshot name as a file name: no '/', no control characters, at most 200 bytes. */
function safeName(name: string | undefined): string | undefined {
  if (name === undefined) return undefined;
  let safe = name.replace(/[/\u0000-\u001f\u007f]/g, '_').trim();
  while (Buffer.byteLength(safe) > 200) safe = safe.slice(0, -1);
  return safe === '' || safe === '.' || safe === '..' ? undefined : safe;
}

/** The file name of each snapshot of one image, oldest first: its name or its UTC time, unique. */
export function entryNames(snaps: readonly SnapshotInfo[]): Map<string, SnapshotInfo> {
  const out = new Map<string, SnapshotInfo>();
  for (const snap of [...snaps].sort((a, b) => (a.snapshot < b.snapshot ? -1 : 1))) {
    const base = safeName(snap.metadata[SNAPSHOT_NAME_KEY]) ?? snap.snapshot;
    let name = base;
    for (let n = 2; out.has(name); n++) name = `${base}~${n}`;
    out.set(name, snap);
  }
  return out;
}

/** The blob reference of a snapshot. */
export function snapshotRef(container: string, snap: SnapshotInfo): BlobRef {
  return { container, name: snap.name, snapshot: snap.snapshot };
}

export class Snapshots {
  /** Snapshots of the blobs of one directory level, by image base name, trusted until `expires`. */
  private readonly listed = new Map<string, { expires: number; snaps: Promise<Map<string, SnapshotInfo[]>> }>();

  constructor(
    private readonly store: BlobStore,
    private readonly images: Images,
    private readonly attrTtlMs: number,
    private readonly clock: Clock,
    private readonly started: Date,
  ) {}

  /** Snapshots of the blobs directly in `dir` of `container`, by image base name (fresh: ask Azure now). */
  inDir(container: string, dir: string, fresh = false): Promise<Map<string, SnapshotInfo[]>> {
    const key = `${container}\0${dir}`;
    const old = this.listed.get(key);
    if (!fresh && old !== undefined && old.expires >= this.clock.now()) return old.snaps;
    const prefix = dir === '' ? '' : `${dir}/`;
    const snaps = this.store.listSnapshots(container, prefix).then((all) => {
      const byImage = new Map<string, SnapshotInfo[]>();
      for (const snap of all) {
        const base = snap.name.slice(prefix.length);
        if (base === '') continue;
        byImage.set(base, [...(byImage.get(base) ?? []), snap]);
      }
      return byImage;
    });
    this.listed.set(key, { expires: this.clock.now() + this.attrTtlMs, snaps });
    snaps.catch(() => this.listed.delete(key));
    return snaps;
  }

  /** The snapshots of blob `name`, by entry name, asked of Azure now (a listing of the names
   *  that start with it, not of its whole directory). */
  async of(container: string, name: string): Promise<Map<string, SnapshotInfo>> {
    const snaps = (await this.store.listSnapshots(container, name)).filter((s) => s.name === name);
    return entryNames(snaps);
  }

  /** The snapshot of blob `name` that `entry` names: an entry name or Azure's id. not-found otherwise. */
  async find(container: string, name: string, entry: string): Promise<{ entry: string; snap: SnapshotInfo }> {
    const entries = await this.of(container, name);
    const byName = entries.get(entry);
    if (byName !== undefined) return { entry, snap: byName };
    for (const [e, snap] of entries) if (snap.snapshot === entry) return { entry: e, snap };
    const known = [...entries.keys()];
    throw new BlobdiskError('not-found', `${container}/${name} has no snapshot ${entry}${known.length > 0 ? ` (it has: ${known.slice(0, 5).join(', ')}${known.length > 5 ? ', ...' : ''})` : ' (it has none)'}`);
  }

  /** A rename copies the blob and deletes the old one, which takes its snapshots along: busy
   *  when the file at `name` (or a file under the directory `name`) has snapshots. */
  async checkMovable(container: string, name: string, isDir: boolean): Promise<void> {
    const snaps = isDir ? await this.store.listSnapshots(container, `${name}/`, true) : [...(await this.of(container, name)).values()];
    if (snaps.length === 0) return;
    const which = isDir ? `${snaps[0]?.name ?? name}, under ${name},` : name;
    throw new BlobdiskError('busy', `${which} has snapshots, which cannot be moved (Azure keeps them with the blob); clone it to the new name (blobdisk clone), or delete its snapshots first`);
  }

  /** Forgets what is known of the snapshots in `dir` (one was taken or deleted here). */
  forget(container: string, dir: string): void {
    this.listed.delete(`${container}\0${dir}`);
  }

  /** What is at `sp` (the directory holding the tree is the caller's to check). */
  async lookup(sp: SnapshotPath): Promise<Entry> {
    if (sp.deeper) throw new BlobdiskError('not-found', `nothing is inside a snapshot`);
    if (sp.image === undefined) return { type: 'dir', mtime: this.started };
    const snaps = (await this.inDir(sp.container, sp.dir)).get(sp.image) ?? [];
    if (sp.entry === undefined) {
      if (snaps.length === 0) throw new BlobdiskError('not-found', `${sp.image} has no snapshots`);
      return { type: 'dir', mtime: this.started };
    }
    const snap = entryNames(snaps).get(sp.entry);
    if (snap === undefined) throw new BlobdiskError('not-found', `${sp.image} has no snapshot ${sp.entry}`);
    return { type: 'file', info: snap, askedAt: 0 };
  }

  /** Names in the tree's directory at `sp`. */
  async readdir(sp: SnapshotPath): Promise<string[]> {
    const entry = await this.lookup(sp);
    if (entry.type === 'file') throw new BlobdiskError('not-directory', `${sp.entry ?? ''} is a snapshot, not a directory`);
    const byImage = await this.inDir(sp.container, sp.dir);
    if (sp.image === undefined) return [...byImage.keys()];
    return [...entryNames(byImage.get(sp.image) ?? []).keys()];
  }

  /** The image bound to the snapshot at `sp`: reads like any image, never written. */
  async open(sp: SnapshotPath): Promise<Image> {
    const entry = await this.lookup(sp);
    if (entry.type === 'dir') throw new BlobdiskError('is-directory', `${sp.image ?? SNAPSHOTS_DIR} is a directory`);
    const snap = entry.info as SnapshotInfo;
    return this.images.get(snapshotRef(sp.container, snap), snap, false);
  }
}
