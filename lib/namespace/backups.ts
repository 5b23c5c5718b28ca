/* The operations behind `blobdisk snapshot`, `clone`, `diff` and `rm`, run by the mount (it
 * holds the credentials and the dirty data) on a control-socket request. Each one that reads
 * an image's moment flushes the image first, so what was written before the command is in
 * the snapshot, the clone or the diff. Paths are the mount's, e.g. /vms/disk.img. */

import { BlobdiskError, isKind } from '../errors';
import type { Image } from '../image/image';
import type { Images } from '../image/registry';
import type { Logger } from '../log';
import { HOLDER_KEY } from '../remote/holder';
import { logicalSize } from '../remote/remote';
import type { BlobInfo, BlobRef, BlobStore, ByteRange, CopyStatus } from '../store/types';
import { CLONE_SOURCE_KEY, cloneSourceText } from './clones';
import { diffImage, methodFor, type CompareChoice, type CompareMethod } from './diff';
import type { Namespace } from './namespace';
import { parentAndBase } from './paths';
import { SNAPSHOTS_DIR, SNAPSHOT_NAME_KEY, snapshotPath, snapshotRef } from './snapshots';

/** Uploads what is dirty in `image` now; gives up when nothing moves for `stallMs`. */
export type FlushImage = (image: Image, stallMs: number, onProgress: (p: unknown) => void) => Promise<void>;

export interface SnapshotTaken {
  readonly snapshot: string;
  /** Its file name under .snapshots, and its path in the mount. */
  readonly entry: string;
  readonly path: string;
}

export interface CloneMade {
  readonly path: string;
  readonly status: CopyStatus;
  /** The snapshot the clone was copied from (and reads from while pending). */
  readonly source: string;
  /** A snapshot taken for the clone that stays until the copy is done (pending only). */
  readonly keptSnapshot: string | null;
}

export interface DiffReport {
  readonly path: string;
  readonly since: string;
  readonly sinceEntry: string;
  readonly method: CompareMethod;
  readonly size: number;
  readonly sinceSize: number;
  readonly changed: ByteRange[];
  readonly cleared: ByteRange[];
  readonly unverified: ByteRange[];
  readonly bytesCompared: number;
}

/** A snapshot name: printable ASCII (Azure metadata values are HTTP headers), at most 200 characters. */
function checkName(name: string): void {
  if (!/^[\x20-\x7e]{1,200}$/.test(name) || name.trim() === '') {
    throw new BlobdiskError('invalid', `snapshot name ${JSON.stringify(name)} must be 1-200 printable ASCII characters`);
  }
}

export class Backups {
  constructor(
    private readonly ns: Namespace,
    private readonly store: BlobStore,
    private readonly images: Images,
    private readonly flush: FlushImage,
    private readonly log: Logger,
  ) {}

  /** The path of `ref`'s snapshot `entry` in the mount. */
  private snapshotPathOf(imagePath: string, entry: string): string {
    const { parent, base } = parentAndBase(imagePath.replace(/^\/+/, ''));
    return `/${parent === '' ? '' : `${parent}/`}${SNAPSHOTS_DIR}/${base}/${entry}`;
  }

  /** Flushes the image at `path` and takes a snapshot of it, named `name` when given. */
  async snapshot(path: string, name: string | undefined, stallMs: number, progress: (p: unknown) => void): Promise<SnapshotTaken> {
    if (name !== undefined) checkName(name);
    const image = await this.ns.imageAt(path);
    const { id, info } = await this.take(image, name, stallMs, progress);
    const entries = await this.ns.snapshots.of(image.ref.container, image.ref.name);
    const entry = [...entries].find(([, s]) => s.snapshot === id)?.[0] ?? id;
    this.log.info(`took snapshot ${entry} of ${image.ref.container}/${image.ref.name} (${id}, ${logicalSize(info)} bytes)`);
    return { snapshot: id, entry, path: this.snapshotPathOf(path, entry) };
  }

  private async take(image: Image, name: string | undefined, stallMs: number, progress: (p: unknown) => void): Promise<{ id: string; info: BlobInfo }> {
    if (image.conflict !== undefined) throw new BlobdiskError('conflict', image.conflict);
    await this.flush(image, stallMs, progress);
    const info = await this.store.getInfo(image.ref);
    const metadata: Record<string, string> = { ...info.metadata };
    delete metadata[CLONE_SOURCE_KEY];
    delete metadata[HOLDER_KEY]; // the lease is the blob's, not its snapshot's
    if (name !== undefined) metadata[SNAPSHOT_NAME_KEY] = name;
    else delete metadata[SNAPSHOT_NAME_KEY];
    const id = await this.store.createSnapshot(image.ref, metadata);
    this.ns.snapshots.forget(image.ref.container, parentAndBase(image.ref.name).parent);
    return { id, info };
  }

  /** Deletes the snapshot `entry` (its file name or Azure's id) of the image at `path`. */
  async deleteSnapshot(path: string, entry: string): Promise<{ snapshot: string; entry: string }> {
    const { container, name } = this.ns.where(path);
    if (container === undefined || name === '' || snapshotPath({ container, name }) !== undefined) {
      throw new BlobdiskError('invalid', `${path} is not an image; give the image the snapshot belongs to`);
    }
    const found = await this.ns.snapshots.find(container, name, entry);
    const ref = snapshotRef(container, found.snap);
    const open = await this.images.peek(ref);
    if (open) await this.images.remove(open);
    else await this.store.deleteBlob(ref);
    this.ns.snapshots.forget(container, parentAndBase(name).parent);
    this.log.info(`deleted snapshot ${found.entry} of ${container}/${name} (${found.snap.snapshot})`);
    return { snapshot: found.snap.snapshot, entry: found.entry };
  }

  /** Deletes the image at `path`; refused (busy) while it has snapshots, unless `withSnapshots`. */
  async remove(path: string, withSnapshots: boolean): Promise<{ removed: string }> {
    await this.ns.unlink(path, withSnapshots);
    return { removed: path };
  }

  /** Makes a new image at `dest` by a server-side copy of `source`: a snapshot path, or an
   *  image (then a snapshot of it is taken first, flushed, so the clone is one moment). */
  async clone(source: string, dest: string, stallMs: number, progress: (p: unknown) => void): Promise<CloneMade> {
    const target = await this.ns.newFile(dest);
    const loc = this.ns.where(source);
    const sp = snapshotPath(loc);
    let from: BlobRef;
    let temporary = false;
    if (sp !== undefined) {
      if (sp.image === undefined || sp.entry === undefined || sp.deeper) throw new BlobdiskError('invalid', `${source} is not a snapshot`);
      const found = await this.ns.snapshots.find(sp.container, sp.dir === '' ? sp.image : `${sp.dir}/${sp.image}`, sp.entry);
      from = snapshotRef(sp.container, found.snap);
    } else {
      const image = await this.ns.imageAt(source);
      const { id } = await this.take(image, `clone to ${dest}`.slice(0, 200), stallMs, progress);
      from = { ...image.ref, snapshot: id };
      temporary = true;
    }
    const metadata: Record<string, string> = { ...(await this.store.getInfo(from)).metadata, [CLONE_SOURCE_KEY]: cloneSourceText(from) };
    delete metadata[SNAPSHOT_NAME_KEY];
    delete metadata[HOLDER_KEY];
    const status = await this.store.startCopy(from, target.ref, metadata);
    this.ns.forgetListings(target.ref.container);
    let kept: string | null = null;
    if (temporary && status === 'success') {
      await this.store.deleteBlob(from).catch((e: unknown) => {
        if (!isKind(e, 'not-found')) this.log.warn(`cloned ${dest}, but the snapshot taken for it stays (${(e as Error).message}); delete it with blobdisk snapshot --delete`);
      });
      this.ns.snapshots.forget(from.container, parentAndBase(from.name).parent);
    } else if (temporary) {
      kept = from.snapshot ?? null;
    }
    this.log.info(`cloned ${dest} from ${from.container}/${from.name} snapshot ${from.snapshot ?? ''} (copy ${status})`);
    return { path: dest, status, source: from.snapshot ?? '', keptSnapshot: kept };
  }

  /** What changed in the image at `path` since its snapshot `since`, after a flush. */
  async diff(path: string, since: string, compare: CompareChoice, stallMs: number, progress: (p: unknown) => void): Promise<DiffReport> {
    const image = await this.ns.imageAt(path);
    const method = methodFor(compare, this.store, image.kind);
    if (image.conflict !== undefined) throw new BlobdiskError('conflict', image.conflict);
    await this.flush(image, stallMs, progress);
    const found = await this.ns.snapshots.find(image.ref.container, image.ref.name, since);
    const info = await this.store.getInfo(image.ref);
    const d = await diffImage(this.store, image.ref, image.kind, info.size, found.snap.snapshot, found.snap.size, method, (compared, of) => progress({ compared, of }));
    return {
      path, since: found.snap.snapshot, sinceEntry: found.entry, method,
      size: logicalSize(info), sinceSize: logicalSize(found.snap),
      changed: d.changed, cleared: d.cleared, unverified: d.unverified, bytesCompared: d.bytesCompared,
    };
  }
}
