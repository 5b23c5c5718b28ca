/* What the mount knows of Azure's directories: one listing per directory level (paged by the
 * store) and the account's containers, each trusted for attrTtlMs. Past that time it is
 * asked again; when Azure is slow or unreachable the old answer is given after at most
 * staleAnswerMs (the request goes on and replaces it when it lands), so `ls` and `stat` of
 * what the mount has seen never wait for a timeout. A directory never listed waits for Azure
 * (within --io-timeout). */

import { isKind } from '../errors';
import type { Clock } from '../clock';
import type { Logger } from '../log';
import type { BlobInfo, BlobStore } from '../store/types';
import { isShowableComponent } from './paths';

export type Entry = { readonly type: 'dir'; readonly mtime: Date } | { readonly type: 'file'; readonly info: BlobInfo; readonly askedAt: number };

export interface Listed {
  readonly expires: number;
  readonly entries: Map<string, Entry>;
}

export const FOLDER_KEY = 'hdi_isfolder';

export function isFolderMarker(info: BlobInfo): boolean {
  return (info.metadata[FOLDER_KEY] ?? '').toLowerCase() === 'true';
}

/** `promise`'s value, or `late()` after `ms` (the promise goes on). */
export function answerWithin<T>(promise: Promise<T>, ms: number, clock: Clock, late: () => T): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = clock.timeout(() => resolve(late()), ms);
    promise.then(
      (v) => {
        timer.cancel();
        resolve(v);
      },
      (e: unknown) => {
        timer.cancel();
        reject(e);
      },
    );
  });
}

export interface ListingOptions {
  readonly attrTtlMs: number;
  readonly staleAnswerMs: number;
  /** The time directories without a marker blob show. */
  readonly started: Date;
}

export class Listings {
  /** The last answer per directory level, and the listings under way. */
  private readonly listings = new Map<string, Listed>();
  private readonly asking = new Map<string, Promise<Listed>>();
  private containers: { readonly expires: number; readonly names: string[] } | undefined;
  private askingContainers: Promise<string[]> | undefined;
  private readonly warned = new Set<string>();

  constructor(
    private readonly store: BlobStore,
    private readonly options: ListingOptions,
    private readonly log: Logger,
    private readonly clock: Clock,
  ) {}

  /** The account's containers, from the cache while fresh. */
  containerNames(): Promise<string[]> {
    const old = this.containers;
    if (old !== undefined && old.expires >= this.clock.now()) return Promise.resolve(old.names);
    const fresh = (this.askingContainers ??= this.store
      .listContainers()
      .then((names) => {
        this.containers = { expires: this.clock.now() + this.options.attrTtlMs, names };
        return names;
      })
      .finally(() => (this.askingContainers = undefined)));
    return old === undefined ? fresh : this.staleWithin(fresh, old.names);
  }

  /** Forgets the containers (one was created). */
  forgetContainers(): void {
    this.containers = undefined;
  }

  /** One directory level of a container, from the cache while fresh. */
  listing(container: string, prefix: string): Promise<Listed> {
    const key = `${container}\0${prefix}`;
    const old = this.listings.get(key);
    if (old !== undefined && old.expires >= this.clock.now()) return Promise.resolve(old);
    const fresh = this.asking.get(key) ?? this.relist(key, container, prefix);
    return old === undefined ? fresh : this.staleWithin(fresh, old);
  }

  /** `fresh` when it comes soon; else, or when Azure cannot be reached, the old answer. */
  private staleWithin<T>(fresh: Promise<T>, old: T): Promise<T> {
    const orOld = fresh.catch((e: unknown) => {
      if (!isKind(e, 'unavailable')) throw e;
      return old;
    });
    return answerWithin(orOld, this.options.staleAnswerMs, this.clock, () => old);
  }

  /** Updates the listing after a change made through the mount (undefined: removed), also
   *  one still under way (it may have been asked before the change). */
  remember(container: string, parent: string, base: string, entry: Entry | undefined): void {
    const key = `${container}\0${parent}`;
    const apply = (listed: Listed): void => {
      if (entry) listed.entries.set(base, entry);
      else listed.entries.delete(base);
    };
    const listed = this.listings.get(key);
    if (listed) apply(listed);
    this.asking.get(key)?.then(apply, () => undefined);
  }

  /** Forgets the listing of one directory level. */
  forget(container: string, prefix: string): void {
    this.listings.delete(`${container}\0${prefix}`);
  }

  /** Forgets every listing of a container. */
  forgetContainer(container: string): void {
    for (const key of [...this.listings.keys()]) if (key.startsWith(`${container}\0`)) this.listings.delete(key);
  }

  private relist(key: string, container: string, prefix: string): Promise<Listed> {
    const askedAt = this.clock.now();
    const listed = this.store
      .listDirectory(container, prefix === '' ? '' : `${prefix}/`)
      .then((listing) => {
        const entries = new Map<string, Entry>();
        const base = prefix === '' ? 0 : prefix.length + 1;
        for (const p of listing.prefixes) {
          const name = p.slice(base, p.endsWith('/') ? -1 : undefined);
          if (this.showable(container, p, name)) entries.set(name, { type: 'dir', mtime: this.options.started });
        }
        for (const info of listing.blobs) {
          const name = info.name.slice(base);
          if (!this.showable(container, info.name, name)) continue;
          if (isFolderMarker(info)) {
            entries.set(name, { type: 'dir', mtime: info.lastModified });
          } else if (entries.has(name)) {
            this.warnOnce(container, info.name, 'is also a directory; showing the directory');
          } else {
            entries.set(name, { type: 'file', info, askedAt });
          }
        }
        const fresh: Listed = { expires: this.clock.now() + this.options.attrTtlMs, entries };
        this.listings.set(key, fresh);
        return fresh;
      })
      .finally(() => this.asking.delete(key));
    this.asking.set(key, listed);
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
}
