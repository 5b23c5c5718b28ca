/* The mount's tree: containers, virtual directories and blobs, with attributes. A
 * directory's listing comes from Azure one level at a time (paged by the store) and is
 * trusted for `attrTtlMs`, so `ls -l` of a big folder asks Azure once, not once per file.
 * Empty directories are marker blobs with metadata hdi_isfolder=true (blobfuse2/ADLS
 * convention). Opening a file always asks Azure for the blob's current properties, so a
 * blob changed elsewhere is noticed at open (close-to-open consistency). */

import { BlobdiskError, isBlobdiskError, isKind } from '../errors';
import { Image } from '../image/image';
import { Images } from '../image/registry';
import { Clock, systemClock } from '../clock';
import { DEFAULT_TUNABLES, type Tunables } from '../tunables';
import { Logger } from '../log';
import { logicalSize } from '../remote/remote';
import { BlobRef, BlobStore } from '../store/types';
import { Entry, FOLDER_KEY, Listed, Listings, answerWithin, isFolderMarker } from './listings';
import { Location, blobComponentProblem, globToRegExp, isShowableComponent, locate, parentAndBase } from './paths';
import { SNAPSHOTS_DIR, Snapshots, snapshotPath, snapshotRef } from './snapshots';
import { cloneSource } from './clones';

export interface NamespaceOptions {
  readonly container: string | undefined;
  readonly attrTtlMs: number;
  readonly readOnly: boolean;
  /** New files whose name matches one of these globs become page blobs. */
  readonly pageBlobPatterns: readonly string[];
}

export { globToRegExp };

const MAX_BLOB_NAME = 1024;

/** A file entry carries `askedAt`: when the request that described it was sent (the clock's now()),
 *  so that an open image can tell whether the entry is newer than what it knows. */

export interface Attributes {
  readonly type: 'dir' | 'file';
  readonly size: number;
  /** 512-byte blocks actually holding data (page blobs: allocated pages). */
  readonly blocks: number;
  readonly mtime: Date;
  readonly writable: boolean;
}


export class Namespace {
  private readonly listings: Listings;
  /** Images answered from what the mount knows because Azure did not answer (logged once). */
  private readonly slow = new Set<string>();
  private readonly started: Date;
  private readonly pagePatterns: RegExp[];
  /** The `.snapshots` trees (snapshots.ts). */
  readonly snapshots: Snapshots;

  constructor(
    private readonly store: BlobStore,
    private readonly images: Images,
    private readonly options: NamespaceOptions,
    private readonly log: Logger,
    private readonly clock: Clock = systemClock,
    private readonly tunables: Tunables = DEFAULT_TUNABLES,
  ) {
    this.started = new Date(clock.now());
    this.listings = new Listings(store, { attrTtlMs: options.attrTtlMs, staleAnswerMs: tunables.staleAnswerMs, started: this.started }, log, clock);
    this.pagePatterns = options.pageBlobPatterns.map(globToRegExp);
    this.snapshots = new Snapshots(store, images, options.attrTtlMs, clock, this.started);
  }

  private locate(path: string): Location {
    return locate(path, this.options.container);
  }

  private containerNames(): Promise<string[]> {
    return this.listings.containerNames();
  }

  private listing(container: string, prefix: string): Promise<Listed> {
    return this.listings.listing(container, prefix);
  }

  /** What is at `path`. not-found when nothing is. */
  async lookup(path: string): Promise<Entry> {
    const loc = this.locate(path);
    if (loc.container === undefined) return { type: 'dir', mtime: this.started };
    const sp = snapshotPath(loc);
    if (sp !== undefined) {
      if (sp.dir !== '' && (await this.lookup(this.pathOf(sp.container, sp.dir))).type !== 'dir') throw new BlobdiskError('not-found', `${sp.dir} is a file`);
      return this.snapshots.lookup(sp);
    }
    if (loc.name === '') {
      if (this.options.container === undefined && !(await this.containerNames()).includes(loc.container)) {
        throw new BlobdiskError('not-found', `no container ${loc.container}`);
      }
      return { type: 'dir', mtime: this.started };
    }
    const { parent, base } = parentAndBase(loc.name);
    const entry = (await this.listing(loc.container, parent)).entries.get(base);
    if (!entry) throw new BlobdiskError('not-found', `no blob or directory ${loc.container}/${loc.name}`);
    return entry;
  }

  async getattr(path: string): Promise<Attributes> {
    const entry = await this.lookup(path);
    if (entry.type === 'dir') return { type: 'dir', size: 4096, blocks: 8, mtime: entry.mtime, writable: !this.options.readOnly && snapshotPath(this.locate(path)) === undefined };
    const info = entry.info;
    const loc = this.locate(path);
    const snapshot = 'snapshot' in info && typeof info.snapshot === 'string' ? info.snapshot : undefined;
    const writable = !this.options.readOnly && info.kind !== 'append' && snapshot === undefined;
    const ref = snapshot !== undefined ? { container: loc.container ?? '', name: info.name, snapshot } : { container: loc.container ?? '', name: loc.name };
    const image = (await this.images.peek(ref)) ?? (info.kind === 'page' ? await this.images.get(ref, info, false) : undefined);
    if (image) {
      // The listing is at most attrTtlMs old. When it was asked for after the image last
      // heard of the blob and shows another ETag, the blob changed elsewhere: let the image
      // adopt it (revalidate keeps local changes and reports a conflict), or stat keeps the
      // old size until the next open. An older listing says nothing new (Last-Modified has
      // one-second resolution, so it cannot order two changes within a second).
      if (info.etag !== image.remote.etag && entry.askedAt > image.remote.knownAt) await image.remote.revalidate(info);
      const allocated = answerWithin(image.remote.allocatedBytes(), this.tunables.staleAnswerMs, this.clock, () => image.remote.allocatedGuess());
      return { type: 'file', size: image.size, blocks: Math.ceil((await allocated) / 512), mtime: image.mtime, writable };
    }
    const size = logicalSize(info);
    return { type: 'file', size, blocks: Math.ceil(size / 512), mtime: info.lastModified, writable };
  }

  /** Names in the directory at `path`. not-directory for a file. */
  async readdir(path: string): Promise<string[]> {
    const loc = this.locate(path);
    if (loc.container === undefined) return (await this.containerNames()).slice();
    const sp = snapshotPath(loc);
    if (sp !== undefined) return this.snapshots.readdir(sp);
    const entry = await this.lookup(path);
    if (entry.type !== 'dir') throw new BlobdiskError('not-directory', `${path} is a file`);
    const [names, snaps] = await Promise.all([
      this.listing(loc.container, loc.name).then((l) => [...l.entries.keys()]),
      // While Azure is slow or failing to list its snapshots, a directory shows no .snapshots.
      answerWithin(this.snapshots.inDir(loc.container, loc.name).catch(() => new Map()), this.tunables.staleAnswerMs, this.clock, () => new Map()),
    ]);
    return snaps.size > 0 && !names.includes(SNAPSHOTS_DIR) ? [...names, SNAPSHOTS_DIR] : names;
  }

  private checkWritable(path: string): void {
    if (this.options.readOnly) throw new BlobdiskError('read-only', `the mount is read-only (${path})`);
    if (snapshotPath(this.locate(path)) !== undefined) throw new BlobdiskError('read-only', `${path}: snapshots are read-only; clone one to write (blobdisk clone)`);
  }

  /** Mode, owner and times are not kept in Azure: accepted (and ignored) on a writable
   *  mount, read-only on a read-only one, not-found when nothing is at `path`. */
  async setAttributes(path: string): Promise<void> {
    this.checkWritable(path);
    await this.lookup(path);
  }

  /** Renames the file or directory at `path` to `dest`, within a container or across
   *  containers: every blob is copied server-side, then deleted (see Images.rename), so a
   *  file is never under neither name. A file replaces a file at `dest`; a directory may
   *  replace an empty directory. Directory renames move one blob at a time: interrupted,
   *  some blobs are under the new name and the rest under the old, none lost. */
  async rename(path: string, dest: string): Promise<void> {
    this.checkWritable(path);
    this.checkWritable(dest);
    for (const p of [path, dest]) {
      const loc = this.locate(p);
      if (loc.container === undefined || loc.name === '') throw new BlobdiskError('not-permitted', `${p}: containers cannot be renamed; move the files inside instead`);
    }
    const from = this.newRef(path);
    const to = this.newRef(dest);
    if (from.container === to.container && from.name === to.name) return;
    const blob = (r: { container: string; name: string }): BlobRef => ({ container: r.container, name: r.name });
    const source = await this.lookup(path);
    await this.snapshots.checkMovable(from.container, from.name, source.type === 'dir');
    await this.parentIsDirectory(to.container, to.parent);
    const target = await this.lookup(dest).catch((e: unknown) => {
      if (isBlobdiskError(e) && e.kind === 'not-found') return undefined;
      throw e;
    });
    try {
      if (source.type === 'file') {
        if (target?.type === 'dir') throw new BlobdiskError('is-directory', `${dest} is a directory`);
        await this.images.rename(blob(from), blob(to));
        return;
      }
      if (target?.type === 'file') throw new BlobdiskError('not-directory', `${dest} is a file`);
      if (from.container === to.container && to.name.startsWith(`${from.name}/`)) {
        throw new BlobdiskError('invalid', `cannot move ${path} into itself`);
      }
      if (target?.type === 'dir' && (await this.blobsUnder(to.container, to.name)).length > 0) {
        throw new BlobdiskError('not-empty', `${dest} is not empty`);
      }
      // Deepest first, the directory's own marker last: an interrupted rename leaves the
      // source directory in place for whatever was not moved yet.
      const names = (await this.blobsUnder(from.container, from.name)).sort((a, b) => b.length - a.length);
      for (const name of names) {
        await this.images.rename({ container: from.container, name }, { container: to.container, name: to.name + name.slice(from.name.length) });
      }
      const marker = await this.store.getInfo(blob(from)).catch(() => undefined);
      if (marker && isFolderMarker(marker)) await this.images.rename(blob(from), blob(to));
    } finally {
      this.forgetListings(from.container);
      this.forgetListings(to.container);
    }
  }

  /** Names of every blob under directory `name` (at any depth; not its own marker). */
  private async blobsUnder(container: string, name: string): Promise<string[]> {
    const names: string[] = [];
    const walk = async (prefix: string): Promise<void> => {
      const listing = await this.store.listDirectory(container, prefix);
      for (const info of listing.blobs) names.push(info.name);
      for (const p of listing.prefixes) await walk(p.endsWith('/') ? p : `${p}/`);
    };
    await walk(`${name}/`);
    return names;
  }

  /** Forgets the listings of `container` (blobs were made or deleted there). */
  forgetListings(container: string): void {
    this.listings.forgetContainer(container);
  }

  /** A blob reference for a new entry at `path`; invalid for names Azure cannot take. */
  private newRef(path: string): { container: string; name: string; parent: string; base: string } {
    const loc = this.locate(path);
    if (loc.container === undefined || loc.name === '') throw new BlobdiskError('not-permitted', `${path}: containers are directories; create files inside one`);
    const { parent, base } = parentAndBase(loc.name);
    if (!isShowableComponent(base)) throw new BlobdiskError('invalid', `${JSON.stringify(base)} cannot be a blob name`);
    const problem = blobComponentProblem(base);
    if (problem !== undefined) throw new BlobdiskError('invalid', `${JSON.stringify(base)} cannot be a blob name: it ${problem}`);
    if (loc.name.length > MAX_BLOB_NAME) throw new BlobdiskError('name-too-long', `blob names have at most ${MAX_BLOB_NAME} characters`);
    return { container: loc.container, name: loc.name, parent, base };
  }

  /** Puts a new entry into a cached listing, so the kernel sees it before the next listing. */
  private remember(container: string, parent: string, base: string, entry: Entry | undefined): void {
    this.listings.remember(container, parent, base, entry);
  }

  private async parentIsDirectory(container: string, parent: string): Promise<void> {
    if (parent === '') return;
    const entry = await this.lookup(this.pathOf(container, parent));
    if (entry.type !== 'dir') throw new BlobdiskError('not-directory', `${parent} is a file`);
  }

  private pathOf(container: string, name: string): string {
    return this.options.container !== undefined ? `/${name}` : `/${container}/${name}`;
  }

  /** Creates an empty file: a page blob when the name matches the page-blob patterns, else
   *  a block blob. exists when something is there; the new image is leased to us. */
  async create(path: string): Promise<Image> {
    this.checkWritable(path);
    const { container, name, parent, base } = this.newRef(path);
    await this.parentIsDirectory(container, parent);
    const ref = { container, name };
    const page = this.pagePatterns.some((re) => re.test(base));
    if (page) await this.store.createPageBlob(ref, 0);
    else await this.store.createBlockBlob(ref);
    const info = await this.store.getInfo(ref);
    this.remember(container, parent, base, { type: 'file', info, askedAt: this.clock.now() });
    const image = await this.images.get(ref, info, true);
    await image.remote.takeLease();
    return image;
  }

  /** The image at `path`, leased to us for writing (busy when another host holds it, or
   *  while it is a clone Azure is still copying). */
  async openForWrite(path: string): Promise<Image> {
    this.checkWritable(path);
    const image = await this.open(path);
    if (image.ref.snapshot !== undefined) {
      throw new BlobdiskError('busy', `${path} is a clone Azure is still copying: it reads from its source now and can be written once the copy is done`);
    }
    await image.remote.takeLease();
    return image;
  }

  async truncate(path: string, size: number): Promise<void> {
    const image = await this.openForWrite(path);
    await image.truncate(size);
  }

  /** Deletes the file at `path`: its blob, and whatever the cache holds of it. busy when
   *  the image has snapshots, unless `withSnapshots` (then they go too). */
  async unlink(path: string, withSnapshots = false): Promise<void> {
    this.checkWritable(path);
    const image = await this.open(path, false);
    const { container, name, parent, base } = this.newRef(path);
    const snaps = await this.snapshots.of(container, name);
    if (snaps.size > 0 && !withSnapshots) {
      throw new BlobdiskError('busy', `${path} has ${snaps.size} snapshot(s); delete them with blobdisk snapshot --delete, or remove the image and its snapshots with blobdisk rm --with-snapshots`);
    }
    for (const snap of snaps.values()) {
      const open = await this.images.peek(snapshotRef(container, snap));
      if (open) await this.images.remove(open);
    }
    await this.images.remove(image);
    this.snapshots.forget(container, parent);
    this.remember(container, parent, base, undefined);
  }

  /** The image at `path` (not a snapshot), for the snapshot, clone, diff and rm commands. */
  async imageAt(path: string): Promise<Image> {
    if (snapshotPath(this.locate(path)) !== undefined) throw new BlobdiskError('invalid', `${path} is a snapshot; give the image it belongs to`);
    return this.open(path, false);
  }

  /** Where a new file at `path` goes: refused when the mount is read-only, the parent is no
   *  directory or something is there already. */
  async newFile(path: string): Promise<{ ref: BlobRef; parent: string }> {
    this.checkWritable(path);
    const { container, name, parent } = this.newRef(path);
    await this.parentIsDirectory(container, parent);
    if (await this.lookup(path).then(() => true, (e: unknown) => !isKind(e, 'not-found'))) throw new BlobdiskError('exists', `${path} exists`);
    return { ref: { container, name }, parent };
  }

  /** The container and blob name (or directory) at `path`. */
  where(path: string): Location {
    return this.locate(path);
  }

  /** Creates a directory: a marker blob (hdi_isfolder=true), or a container at the account root. */
  async mkdir(path: string): Promise<void> {
    this.checkWritable(path);
    const loc = this.locate(path);
    if (loc.container !== undefined && loc.name === '' && this.options.container === undefined) {
      if (!/^(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*$/.test(loc.container)) {
        throw new BlobdiskError('invalid', `${loc.container} is not a container name (3-63 lowercase letters, digits and single hyphens)`);
      }
      await this.store.createContainer(loc.container);
      this.listings.forgetContainers();
      return;
    }
    const { container, name, parent, base } = this.newRef(path);
    await this.parentIsDirectory(container, parent);
    const existing = await this.lookup(path).catch(() => undefined);
    if (existing) throw new BlobdiskError('exists', `${path} exists`);
    await this.store.createBlockBlob({ container, name }, { metadata: { [FOLDER_KEY]: 'true' } });
    this.remember(container, parent, base, { type: 'dir', mtime: new Date(this.clock.now()) });
  }

  /** Removes an empty directory (its marker blob). not-empty when it holds anything. */
  async rmdir(path: string): Promise<void> {
    this.checkWritable(path);
    const loc = this.locate(path);
    if (loc.container === undefined || loc.name === '') throw new BlobdiskError('not-permitted', `${path}: blobdisk does not delete containers`);
    const entry = await this.lookup(path);
    if (entry.type !== 'dir') throw new BlobdiskError('not-directory', `${path} is a file`);
    const listing = await this.store.listDirectory(loc.container, `${loc.name}/`);
    if (listing.blobs.length > 0 || listing.prefixes.length > 0) throw new BlobdiskError('not-empty', `${path} is not empty`);
    this.listings.forget(loc.container, loc.name);
    try {
      await this.store.deleteBlob({ container: loc.container, name: loc.name });
    } catch (e) {
      if (!isBlobdiskError(e) || e.kind !== 'not-found') throw e;
    }
    const { parent, base } = parentAndBase(loc.name);
    this.remember(loc.container, parent, base, undefined);
  }

  /** The image behind the file at `path`, with its properties fresh from Azure; but an
   *  image this mount holds the lease of needs no Azure at all (every change of the blob is
   *  ours), and one it knows is answered from what it knows when Azure is slow to answer
   *  (the check goes on and updates it). Only an image the mount has not seen waits for
   *  Azure, within --io-timeout. */
  async open(path: string, serveClones = true): Promise<Image> {
    const loc = this.locate(path);
    if (loc.container === undefined || loc.name === '') throw new BlobdiskError('is-directory', `${path} is a directory`);
    const sp = snapshotPath(loc);
    if (sp !== undefined) return this.snapshots.open(sp);
    const ref = { container: loc.container, name: loc.name };
    const known = await this.images.peek(ref);
    if (known?.remote.leaseId !== undefined) return known;
    const entry = await this.lookup(path);
    if (entry.type === 'dir') throw new BlobdiskError('is-directory', `${path} is a directory`);
    const asked = this.store.getInfo(ref).then(async (info) => {
      this.slow.delete(`${ref.container}/${ref.name}`);
      // A clone Azure is still copying reads from its source until the copy is done.
      const source = serveClones ? cloneSource(info) : undefined;
      if (source !== undefined) return this.images.get(source, await this.store.getInfo(source), false);
      return this.images.get(ref, info, true);
    });
    if (!known) return asked;
    const orKnown = asked.catch((e: unknown) => {
      if (!isKind(e, 'unavailable')) throw e;
      return this.knownWhileSlow(known, (e as Error).message);
    });
    return answerWithin(orKnown, this.tunables.staleAnswerMs, this.clock, () => this.knownWhileSlow(known, `no answer within ${this.tunables.staleAnswerMs} ms`));
  }

  /** `image`, said once in the log while Azure keeps not answering about it. */
  private knownWhileSlow(image: Image, why: string): Image {
    const key = `${image.ref.container}/${image.ref.name}`;
    if (!this.slow.has(key)) {
      this.slow.add(key);
      this.log.warn(`cannot check ${key} with Azure (${why}); using what this mount knows of it`);
    }
    return image;
  }
}
