/* The mount's tree: containers, virtual directories and blobs, with attributes. A
 * directory's listing comes from Azure one level at a time (paged by the store) and is
 * trusted for `attrTtlMs`, so `ls -l` of a big folder asks Azure once, not once per file.
 * Empty directories are marker blobs with metadata hdi_isfolder=true (blobfuse2/ADLS
 * convention). Opening a file always asks Azure for the blob's current properties, so a
 * blob changed elsewhere is noticed at open (close-to-open consistency). */

import { BlobdiskError } from '../errors';
import { Image, logicalSize } from '../image/image';
import { Images } from '../image/registry';
import { Logger } from '../log';
import { BlobInfo, BlobStore } from '../store/types';
import { Location, isShowableComponent, locate, parentAndBase } from './paths';

export interface NamespaceOptions {
  readonly container: string | undefined;
  readonly attrTtlMs: number;
  readonly readOnly: boolean;
}

export type Entry = { readonly type: 'dir'; readonly mtime: Date } | { readonly type: 'file'; readonly info: BlobInfo };

export interface Attributes {
  readonly type: 'dir' | 'file';
  readonly size: number;
  /** 512-byte blocks actually holding data (page blobs: allocated pages). */
  readonly blocks: number;
  readonly mtime: Date;
  readonly writable: boolean;
}

interface Listed {
  readonly expires: number;
  readonly entries: Map<string, Entry>;
}

const FOLDER_KEY = 'hdi_isfolder';

export function isFolderMarker(info: BlobInfo): boolean {
  return (info.metadata[FOLDER_KEY] ?? '').toLowerCase() === 'true';
}

export class Namespace {
  private readonly listings = new Map<string, Promise<Listed>>();
  private containers: { expires: number; names: Promise<string[]> } | undefined;
  private readonly warned = new Set<string>();
  private readonly started = new Date();

  constructor(
    private readonly store: BlobStore,
    private readonly images: Images,
    private readonly options: NamespaceOptions,
    private readonly log: Logger,
  ) {}

  private locate(path: string): Location {
    return locate(path, this.options.container);
  }

  private async containerNames(): Promise<string[]> {
    const now = Date.now();
    if (!this.containers || this.containers.expires < now) {
      const names = this.store.listContainers();
      this.containers = { expires: now + this.options.attrTtlMs, names };
      names.catch(() => (this.containers = undefined));
    }
    return this.containers.names;
  }

  /** One directory level of a container, from the cache while fresh. */
  private listing(container: string, prefix: string): Promise<Listed> {
    const key = `${container}\0${prefix}`;
    const cached = this.listings.get(key);
    if (cached) {
      const fresh = cached.then((l) => (l.expires >= Date.now() ? l : undefined));
      return fresh.then((l) => l ?? this.relist(key, container, prefix));
    }
    return this.relist(key, container, prefix);
  }

  private relist(key: string, container: string, prefix: string): Promise<Listed> {
    const listed = this.store.listDirectory(container, prefix === '' ? '' : `${prefix}/`).then((listing) => {
      const entries = new Map<string, Entry>();
      const base = prefix === '' ? 0 : prefix.length + 1;
      for (const p of listing.prefixes) {
        const name = p.slice(base, p.endsWith('/') ? -1 : undefined);
        if (this.showable(container, p, name)) entries.set(name, { type: 'dir', mtime: this.started });
      }
      for (const info of listing.blobs) {
        const name = info.name.slice(base);
        if (!this.showable(container, info.name, name)) continue;
        if (isFolderMarker(info)) {
          entries.set(name, { type: 'dir', mtime: info.lastModified });
        } else if (entries.has(name)) {
          this.warnOnce(container, info.name, 'is also a directory; showing the directory');
        } else {
          entries.set(name, { type: 'file', info });
        }
      }
      return { expires: Date.now() + this.options.attrTtlMs, entries };
    });
    this.listings.set(key, listed);
    listed.catch(() => this.listings.delete(key));
    return listed;
  }

  private showable(container: string, blobName: string, component: string): boolean {
    if (isShowableComponent(component)) return true;
    this.warnOnce(container, blobName, 'cannot be shown as a path (empty, "." or ".." component, or over 255 bytes); leaving it out');
    return false;
  }

  private warnOnce(container: string, blobName: string, why: string): void {
    const key = `${container}/${blobName}`;
    if (this.warned.has(key)) return;
    this.warned.add(key);
    this.log.warn(`blob ${JSON.stringify(key)} ${why}`);
  }

  /** What is at `path`. ENOENT when nothing is. */
  async lookup(path: string): Promise<Entry> {
    const loc = this.locate(path);
    if (loc.container === undefined) return { type: 'dir', mtime: this.started };
    if (loc.name === '') {
      if (this.options.container === undefined && !(await this.containerNames()).includes(loc.container)) {
        throw new BlobdiskError('ENOENT', `no container ${loc.container}`);
      }
      return { type: 'dir', mtime: this.started };
    }
    const { parent, base } = parentAndBase(loc.name);
    const entry = (await this.listing(loc.container, parent)).entries.get(base);
    if (!entry) throw new BlobdiskError('ENOENT', `no blob or directory ${loc.container}/${loc.name}`);
    return entry;
  }

  async getattr(path: string): Promise<Attributes> {
    const entry = await this.lookup(path);
    if (entry.type === 'dir') return { type: 'dir', size: 4096, blocks: 8, mtime: entry.mtime, writable: !this.options.readOnly };
    const info = entry.info;
    const loc = this.locate(path);
    let size = logicalSize(info);
    let blocks = Math.ceil(size / 512);
    if (info.kind === 'page' && loc.container !== undefined) {
      const image = await this.images.get({ container: loc.container, name: loc.name }, info, false);
      size = image.size;
      blocks = Math.ceil((await image.allocatedBytes()) / 512);
    }
    return { type: 'file', size, blocks, mtime: info.lastModified, writable: !this.options.readOnly && info.kind !== 'append' };
  }

  /** Names in the directory at `path`. ENOTDIR for a file. */
  async readdir(path: string): Promise<string[]> {
    const loc = this.locate(path);
    if (loc.container === undefined) return (await this.containerNames()).slice();
    const entry = await this.lookup(path);
    if (entry.type !== 'dir') throw new BlobdiskError('ENOTDIR', `${path} is a file`);
    return [...(await this.listing(loc.container, loc.name)).entries.keys()];
  }

  /** The image behind the file at `path`, with its properties fresh from Azure. */
  async open(path: string): Promise<Image> {
    const loc = this.locate(path);
    if (loc.container === undefined || loc.name === '') throw new BlobdiskError('EISDIR', `${path} is a directory`);
    const entry = await this.lookup(path);
    if (entry.type === 'dir') throw new BlobdiskError('EISDIR', `${path} is a directory`);
    const ref = { container: loc.container, name: loc.name };
    return this.images.get(ref, await this.store.getInfo(ref), true);
  }
}
