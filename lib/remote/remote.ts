/* What Azure holds of one image's blob, as far as this mount knows, and how our sizes
 * catch up with it. An image's `size` is ours: it runs ahead of Azure's while a change
 * waits for upload. The flusher makes Azure's size follow and reports back; truncates in
 * between are counted (`cuts`), so a report never settles a shrink it did not see.
 *
 *   event                                 size        remoteEnd (Azure bytes still ours)     cuts, shrinks
 *   a write ends past the size            its end     unchanged                              unchanged
 *   truncate up                           new size    unchanged                              cuts+1
 *   truncate down                         new size    min(remoteEnd, new size)               cuts+1, shrink {cuts, size} kept
 *   a flush starts                        it reads size and cuts together (one tick), then: page blob cut to
 *                                         remoteEnd, grown to the size, logical size in metadata; block blob committed
 *   uploaded(info, cuts)                  unchanged   smallest shrink after `cuts`, else all  shrinks up to `cuts` settled
 *   uploaded(info) (pages went up)        unchanged   unchanged                              unchanged
 *   revalidate: same ETag, or one of ours unchanged   unchanged                              unchanged
 *   revalidate: changed elsewhere,        Azure's     all (none cut)                         clean grains dropped, epoch moves
 *     nothing waiting for upload
 *   revalidate: changed elsewhere,        unchanged   unchanged                              conflict: nothing is overwritten,
 *     something waiting for upload                                                           writes fail (unless our lease is
 *                                                                                            still on it: a crash's own uploads)
 *   discardLocal(info) (blobdisk recover) Azure's     all (none cut)                         none; every grain dropped, conflict and lease gone
 * In sync when Azure holds nothing past remoteEnd and its (logical) size is ours.
 * While we hold the lease every change of the blob is ours: descriptions of it from a
 * listing or a HEAD are ignored (they can only be older than what the flusher reported). */

import { GrainCache } from '../cache/cache';
import { SECTOR } from '../cache/sectors';
import { isBlobdiskError, isKind } from '../errors';
import { GrainMap, ImageRow } from '../grainmap/grainmap';
import { Logger } from '../log';
import { BlobInfo, BlobKind, BlobRef, BlobStore, WriteConditions } from '../store/types';
import { SYSTEM_TIMING, Timing } from '../tunables';
import { HolderIdentity, holderText, writeHolder } from './holder';
import { Lease } from './lease';
import { LOGICAL_SIZE_KEY, logicalSize, logicalSizeText } from './sizes';
import { PageMap } from './pagemap';

export { LOGICAL_SIZE_KEY, logicalSize, logicalSizeText };

export interface RemoteDeps {
  readonly store: BlobStore;
  readonly cache: GrainCache;
  readonly map: GrainMap;
  readonly log: Logger;
  readonly grainSize: number;
  /** The lease id this cache directory proposes (stable, so a crashed mount's leases come back). */
  readonly leaseId: string;
  /** The clock and tunables (the system's when absent). */
  readonly timing?: Timing;
  /** This mount, written into a blob's metadata when it takes the lease (holder.ts). */
  readonly holder?: HolderIdentity;
}

export class RemoteBlob {
  private row: ImageRow;
  private current: BlobInfo;
  private localSize: number;
  private where: BlobRef;
  private pageMap: PageMap | undefined;
  readonly lease: Lease;
  private readonly timing: Timing;
  /** Truncates so far: the flusher reads it with the size it makes Azure's. */
  cuts = 0;
  /** Shrinking truncates not yet reported back by a flush that began after them: what
   *  Azure holds past their sizes no longer belongs to the image. */
  private shrinks: { cuts: number; size: number }[] = [];
  /** When `info` was last known to be what Azure holds (the clock's now()): a description of the
   *  blob asked for before then is older than `info`. */
  knownAt: number;
  private conflictReason: string | undefined;
  /** Told, synchronously, when the blob changed elsewhere and what was read of it is stale. */
  private readonly changedListeners: (() => void)[] = [];

  private constructor(
    private readonly deps: RemoteDeps,
    ref: BlobRef,
    row: ImageRow,
    info: BlobInfo,
  ) {
    this.where = ref;
    this.row = row;
    this.current = info;
    this.localSize = row.size;
    this.timing = deps.timing ?? SYSTEM_TIMING;
    this.knownAt = this.timing.clock.now();
    const lease = { store: deps.store, log: deps.log, proposedId: deps.leaseId, clock: this.timing.clock, seconds: this.timing.tunables.leaseSeconds };
    this.lease = new Lease(lease, () => this.where, (reason) => this.setConflict(reason), () => this.current.etag, async (id) => {
      // Names this mount in the metadata of the blob just leased (holder.ts); the new ETag is ours.
      if (deps.holder !== undefined && ref.snapshot === undefined) this.uploaded(await writeHolder(deps.store, this.where, this.current, id, holderText(deps.holder, new Date(this.timing.clock.now())), (e) => this.produced(e)));
    });
  }

  /** The remote state of `ref` as Azure described it in `info`, from the grain map's row
   *  (created when new); cached grains past the row's size are dropped. Call revalidate()
   *  with `info` once the listeners are in place. */
  static async open(deps: RemoteDeps, account: string, ref: BlobRef, info: BlobInfo): Promise<RemoteBlob> {
    // A snapshot has its own row (and cached grains): NUL cannot be part of a blob name.
    const row = deps.map.ensureImage(account, ref.container, ref.snapshot === undefined ? ref.name : `${ref.name}\0${ref.snapshot}`, info.kind, logicalSize(info));
    await deps.cache.clipPast(row.id, row.size);
    return new RemoteBlob(deps, ref, row, info);
  }

  /** `fn` runs whenever the blob changed elsewhere (before the cache is cleaned). */
  onChanged(fn: () => void): void {
    this.changedListeners.push(fn);
  }

  get id(): number {
    return this.row.id;
  }
  /** The blob (it changes when the file is renamed). */
  get ref(): BlobRef {
    return this.where;
  }
  /** The image's size: ours, ahead of Azure's while a change waits for upload. */
  get size(): number {
    return this.localSize;
  }
  get kind(): BlobKind {
    return this.current.kind;
  }
  get etag(): string {
    return this.current.etag;
  }
  /** What we last knew of the blob in Azure. */
  get info(): BlobInfo {
    return this.current;
  }
  /** Bytes of the blob in Azure that still belong to the image. */
  get remoteEnd(): number {
    return Math.min(this.current.size, this.row.remoteEnd ?? Number.MAX_SAFE_INTEGER);
  }
  /** Why nothing may be written (the blob changed elsewhere, was replaced or deleted, the
   *  lease was lost); undefined while all is well. */
  get conflict(): string | undefined {
    return this.conflictReason;
  }
  get leaseId(): string | undefined {
    return this.lease.id;
  }

  /** Puts the image in conflict for `reason` and says so in the log. */
  setConflict(reason: string): void {
    this.conflictReason = reason;
    // No more writes land natively (see lib/cache/native.ts): they fail from now on.
    this.deps.cache.native.revokeImage(this.row.id);
    this.deps.log.error(reason);
  }

  /** Whether anything (data or a size change) waits for upload. */
  needsUpload(): boolean {
    return this.deps.cache.dirtyGrains(this.row.id).length > 0 || this.localSize !== logicalSize(this.current) || this.row.remoteEnd !== null;
  }

  private setRow(fields: Partial<Pick<ImageRow, 'etag' | 'kind' | 'size' | 'allocated' | 'allocatedEtag' | 'remoteEnd'>>): void {
    this.deps.map.updateImage(this.row.id, fields);
    this.row = { ...this.row, ...fields };
  }

  /** Adopts what Azure now says of the blob (see the table above). */
  async revalidate(info: BlobInfo): Promise<void> {
    this.knownAt = this.timing.clock.now();
    const changed = this.row.etag !== info.etag && !this.deps.map.isOurEtag(this.row.id, info.etag);
    // Under our lease every change is ours, and the flusher keeps `info` current; a listing
    // or a HEAD that raced with an upload could only be older.
    if (this.lease.id !== undefined) return;
    if (!changed) {
      this.current = info;
      if (this.row.etag !== info.etag) this.setRow({ etag: info.etag }); // one of our own uploads
      return;
    }
    if (this.row.etag !== null && this.needsUpload()) {
      // After a crash, uploads that were under way changed the ETag without our noting it.
      // If the blob is still leased, and to our lease id, nobody else can have written it.
      const seen = this.current;
      if (info.leased === true && (await this.lease.take().then(() => true, () => false))) {
        // Unless the holder was just written (its ETag is then what Azure has, and ours).
        if (this.current === seen) this.current = info;
        this.setRow({ etag: this.current.etag });
        return;
      }
      this.setConflict(`${this.ref.container}/${this.ref.name} changed in Azure while this cache holds changes not yet uploaded; nothing was overwritten`);
      return;
    }
    this.current = info;
    for (const fn of this.changedListeners) fn();
    if (this.row.etag !== null) {
      const dropped = await this.deps.cache.dropClean(this.row.id);
      if (dropped > 0) this.deps.log.info(`${this.ref.container}/${this.ref.name} changed in Azure; dropped ${dropped} cached grains`);
    }
    this.localSize = logicalSize(info);
    this.setRow({ etag: info.etag, kind: info.kind, size: this.localSize, remoteEnd: null });
    this.pageMap?.reset(info.etag, info.size);
  }

  /** Drops every local change (dirty grains, size changes, a conflict) and every cached
   *  grain, and follows Azure's blob as `info` describes it now (`blobdisk recover`). The
   *  caller holds the image's uploads (Uploads.exclusive); a lease we hold is released. */
  async discardLocal(info: BlobInfo): Promise<void> {
    await this.lease.release();
    this.lease.drop();
    this.conflictReason = undefined;
    this.shrinks = [];
    this.current = info;
    this.knownAt = this.timing.clock.now();
    for (const fn of this.changedListeners) fn();
    await this.deps.cache.dropImage(this.row.id);
    this.localSize = logicalSize(info);
    this.setRow({ etag: info.etag, kind: info.kind, size: this.localSize, remoteEnd: null, allocated: null, allocatedEtag: null });
    this.pageMap?.reset(info.etag, info.size);
  }

  /** Asks Azure for the blob's properties again and revalidates. not-found when it is gone. */
  async refresh(): Promise<void> {
    await this.revalidate(await this.deps.store.getInfo(this.ref));
  }

  /** The blob now lives in `dest`, a server-side copy that Azure describes as `info`: the
   *  same bytes, so the grain map row follows. Returns what deleting the old blob needs
   *  (our lease on it, if we held one); lease.take() takes one on `dest`. */
  movedTo(dest: BlobRef, info: BlobInfo): WriteConditions {
    const old = this.lease.heldConditions();
    this.lease.drop();
    this.where = dest;
    this.deps.map.renameImage(this.row.id, dest.container, dest.name);
    this.row = { ...this.row, container: dest.container, name: dest.name };
    this.current = info;
    this.knownAt = this.timing.clock.now();
    this.setRow({ etag: info.etag });
    this.pageMap = undefined;
    return old;
  }

  /** Another blob replaced this one (a rename onto its name): what the cache holds of it
   *  goes, and writes fail from now on. */
  async forget(): Promise<void> {
    this.lease.drop();
    this.conflictReason = `${this.ref.container}/${this.ref.name} was replaced by a rename`;
    await this.deps.cache.dropImage(this.row.id);
    this.deps.map.deleteImage(this.row.id);
  }

  /** Deletes the blob in Azure and forgets it here, dirty data included. */
  async remove(): Promise<void> {
    const conditions = this.lease.heldConditions();
    this.lease.drop();
    try {
      await this.deps.store.deleteBlob(this.ref, conditions);
    } catch (e) {
      if (!isBlobdiskError(e) || e.kind !== 'not-found') throw e;
    }
    this.conflictReason = `${this.ref.name} was deleted`;
    await this.deps.cache.dropImage(this.row.id);
    this.deps.map.deleteImage(this.row.id);
  }

  // ---- sizes (see the table above) ----------------------------------------------------

  /** A write ended at `end`: the image grows when that is past its size. */
  wroteTo(end: number): void {
    if (end <= this.localSize) return;
    this.localSize = end;
    this.setRow({ size: end });
  }

  /** A truncate down to `size`. The cut is counted together with the new size, never
   *  before it: a flush takes `cuts` and the size at once, and one that counted this cut
   *  while it still saw the old size would report the shrink settled, and Azure would
   *  keep the bytes past it. The new end holds before the cache is cut: a read while it is
   *  being cut must not fetch (and cache) what Azure still holds past it. */
  shrink(size: number): void {
    this.cuts++;
    this.shrinks.push({ cuts: this.cuts, size });
    if (size < this.remoteEnd) this.setRow({ remoteEnd: size });
    this.localSize = size;
    this.setRow({ size });
  }

  /** A truncate up to `size`: the rest reads as zeros. */
  grow(size: number): void {
    this.cuts++;
    this.localSize = size;
    this.setRow({ size });
  }

  /** Whether Azure has the image's size (and nothing past a shrink). */
  sizeSynced(): boolean {
    const remote = this.current;
    if (this.remoteEnd < remote.size) return false;
    if (this.kind !== 'page') return this.localSize === remote.size;
    return Math.ceil(this.localSize / SECTOR) * SECTOR === remote.size && remote.metadata[LOGICAL_SIZE_KEY] === logicalSizeText(this.localSize);
  }

  // ---- the flusher's reports ----------------------------------------------------------

  /** An ETag one of our requests produced, so a later mount does not mistake it for
   *  someone else's change. Returns it. */
  produced(etag: string): string {
    this.deps.map.recordEtag(this.row.id, etag);
    return etag;
  }

  /** What Azure holds now (after an upload, a resize, a commit). With `cuts` (the count
   *  read together with the size the flush made Azure's), Azure holds the whole image as
   *  it was then: only a shrink since cuts into it. The old cut must not stay: grains the
   *  flush marked clean past it would read as zeros once evicted, and the next flush would
   *  cut or restage them from those zeros. Without `cuts`, the end stays as it is. */
  uploaded(info: BlobInfo, cuts?: number): void {
    this.current = info;
    this.knownAt = this.timing.clock.now();
    if (cuts === undefined) {
      this.setRow({ etag: info.etag });
    } else {
      // Flushes of one image run one at a time: older shrinks are settled by this one.
      this.shrinks = this.shrinks.filter((s) => s.cuts > cuts);
      const floor = Math.min(...this.shrinks.map((s) => s.size));
      this.setRow({ etag: info.etag, remoteEnd: Number.isFinite(floor) ? floor : null });
    }
    this.pageMap?.reset(info.etag, info.size);
  }

  /** One of our Put Page / Clear Pages calls changed [start, end). */
  pagesChanged(start: number, end: number): void {
    this.pageMap?.changed(start, end);
  }

  // ---- pages and allocation ------------------------------------------------------------

  /** Which bytes of the page blob hold pages, learnt by window. */
  get pages(): PageMap {
    this.pageMap ??= new PageMap(this.deps.store, this.ref, this.timing.tunables.pageWindowGrains * this.deps.grainSize, this.current.etag, this.current.size, () => this.lease.id === undefined, {
      clock: this.timing.clock,
      ms: this.timing.tunables.failFastMs,
      silentAfterMs: this.timing.tunables.silentAfterMs,
    });
    return this.pageMap;
  }

  /** Whether Azure holds data for [start, end) of the image (false: it reads as zeros). */
  async has(start: number, end: number): Promise<boolean> {
    const stop = Math.min(end, this.remoteEnd);
    if (stop <= start) return false;
    if (this.kind !== 'page') return true;
    return (await this.pages.ranges(start, stop)).length > 0;
  }

  /** Bytes holding data, for st_blocks: page blobs count allocated pages (remembered per
   *  ETag) plus what waits for upload; block blobs their size. */
  async allocatedBytes(): Promise<number> {
    try {
      return await this.allocatedOnce();
    } catch (e) {
      if (!isBlobdiskError(e) || e.kind !== 'stale') throw e;
      await this.refresh();
      return this.allocatedOnce();
    }
  }

  /** What allocatedBytes() would say from what this mount last knew, without asking Azure. */
  allocatedGuess(): number {
    if (this.kind !== 'page') return this.size;
    const pendingBytes = this.deps.cache.dirtyOf(this.row.id).bytes;
    return Math.min(this.size, Math.max(this.row.allocated ?? 0, this.deps.cache.cachedBytes(this.row.id)) + pendingBytes);
  }

  private async allocatedOnce(): Promise<number> {
    if (this.kind !== 'page') return this.size;
    const pendingBytes = this.deps.cache.dirtyOf(this.row.id).bytes;
    if (this.row.allocatedEtag === this.current.etag && this.row.allocated !== null) return Math.min(this.size, this.row.allocated + pendingBytes);
    const etag = this.current.etag;
    let allocated: number;
    try {
      allocated = await this.pages.allocatedBytes();
    } catch (e) {
      // st_blocks is advisory: with Azure unreachable, stat (and so every open) answers from
      // what this mount last knew instead of failing with EIO.
      if (!isKind(e, 'unavailable')) throw e;
      return this.allocatedGuess();
    }
    if (this.current.etag === etag) this.setRow({ allocated, allocatedEtag: etag });
    return Math.min(this.size, allocated + pendingBytes);
  }

  // ---- the lease -----------------------------------------------------------------------

  /** Takes the blob's lease (once); busy when another holds it; with `ifMatch`, stale if the ETag moved. */
  takeLease(ifMatch?: string): Promise<void> {
    return this.lease.take(ifMatch);
  }

  /** Releases the lease (at unmount, after draining). */
  async releaseLease(): Promise<void> {
    // Azure's ETag is unchanged by a release; remember it so the next mount trusts the cache.
    if (await this.lease.release()) this.setRow({ etag: this.current.etag });
  }

  /** Conditions every write to Azure carries. */
  writeConditions(): WriteConditions {
    return this.lease.conditions();
  }
}
