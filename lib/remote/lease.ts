/* The lease of one blob: one writer per image. An image is leased before anything of it
 * is written to Azure, and every write carries the lease id. The id we propose is this
 * cache directory's own (stable across mounts), so a mount after a crash gets its leases
 * back instead of finding the blob held by a stranger.
 *
 *   state    event                                  next     effect
 *   free     take()                                 taking   Acquire Lease, proposing our id, leaseSeconds
 *   taking   granted                                held     renewal every third of leaseSeconds
 *   taking   refused: another writer holds it       free     take() rejects busy; the image stays readable
 *   taking   other failure                          free     take() rejects with it; the next take() tries again
 *   held     take()                                 held     nothing (one take per lease)
 *   held     renewed                                held     -
 *   held     renewal failed otherwise (Azure away)  held     logged; the next tick retakes it instead: Acquire Lease with
 *                                                            our id and If-Match on the ETag we know, in one request (the
 *                                                            lease may have run out meanwhile; a foreign change must not
 *                                                            be adopted)
 *   held     retake refused: ETag changed (stale)   held     a plain renewal succeeds: the lease is ours again and every change
 *                                                            since was ours (unanswered renewals and uploads that got through)
 *   held     ... and the renewal is refused         lost     onLost(): someone wrote the blob while we could not renew
 *   held     renewal refused (busy) or blob gone   lost     onLost(): the image is in conflict, nothing is overwritten
 *   held     drop() (moved, replaced, deleted,      free     renewal stops; the id is forgotten (moved: the caller
 *            closing)                                        deletes the old blob with it, then take() = retake)
 *   held     release() (unmount, drained)           free     Release Lease; if that fails Azure expires it by itself
 *   lost     take()                                 taking   as free (the conflict stays: writes still fail)
 *   lost     drop() (local changes discarded)       free     -
 *
 * The lease never changes the blob's ETag; the owner remembers that at release. Once taken,
 * `afterTake` runs (the owner writes the holder into the metadata, holder.ts); a busy
 * refusal logs who holds the blob, as its metadata names the holder. */

import { BlobdiskError, isBlobdiskError } from '../errors';
import { Logger } from '../log';
import { BlobRef, BlobStore, WriteConditions } from '../store/types';
import { Clock, Timer } from '../clock';
import { describeHolder } from './holder';

export interface LeaseDeps {
  readonly store: BlobStore;
  readonly log: Logger;
  /** The lease id this cache directory proposes. */
  readonly proposedId: string;
  readonly clock: Clock;
  /** Leases last this long (15 to 60 s) and are renewed at a third of it. */
  readonly seconds: number;
}

export class Lease {
  private timer: Timer | undefined;
  private taking: Promise<void> | undefined;
  private held: string | undefined;
  /** A renewal found the lease gone, and no take() has succeeded since. */
  private lost = false;
  /** The last renewal failed without an answer: the next one retakes with If-Match. */
  private renewFailed = false;

  constructor(
    private readonly deps: LeaseDeps,
    /** The blob now (it changes when the file is renamed). */
    private readonly ref: () => BlobRef,
    /** Told once when a renewal finds the lease gone: another writer may have the blob. */
    private readonly onLost: (reason: string) => void,
    /** The ETag the image knows the blob by (what a retake must still find). */
    private readonly etag: () => string,
    /** Runs once each time the lease is taken, with its id; its failure is only logged. */
    private readonly afterTake: (leaseId: string) => Promise<void> = () => Promise.resolve(),
  ) {}

  /** The lease id while we hold the lease. */
  get id(): string | undefined {
    return this.held;
  }

  /** For status and metrics: held, lost (a renewal found it gone), or none. */
  get state(): 'held' | 'lost' | 'none' {
    return this.held !== undefined ? 'held' : this.lost ? 'lost' : 'none';
  }

  /** Takes the lease (once); busy when another host holds it. With `ifMatch`, only while
   *  the blob's ETag is that one (stale otherwise), in the same request. */
  take(ifMatch?: string): Promise<void> {
    if (this.held !== undefined) return Promise.resolve();
    this.taking ??= (async () => {
      const ref = this.ref();
      try {
        const id = await this.deps.store.acquireLease(ref, this.deps.seconds, this.deps.proposedId, ifMatch);
        this.held = id;
        this.lost = false;
        this.timer = this.deps.clock.interval(() => void this.renew(), (this.deps.seconds * 1000) / 3);
        await this.afterTake(id).catch((e: unknown) =>
          this.deps.log.warn(`took the lease on ${ref.container}/${ref.name}, but could not record this mount as its holder (${isBlobdiskError(e) ? e.kind : 'error'})`),
        );
      } catch (e) {
        if (isBlobdiskError(e) && e.kind === 'busy') {
          const holder = await describeHolder(this.deps.store, ref);
          this.deps.log.warn(`${ref.container}/${ref.name} is leased by ${holder}: opening it for writing here fails with EBUSY`);
          throw new BlobdiskError('busy', `${ref.container}/${ref.name} is leased by another writer (${holder}); it can only be read here`, { cause: e });
        }
        throw e;
      } finally {
        this.taking = undefined;
      }
    })();
    return this.taking;
  }

  private async renew(): Promise<void> {
    const id = this.held;
    if (id === undefined) return;
    const ref = this.ref();
    try {
      if (this.renewFailed) await this.retake(ref, id);
      else await this.deps.store.renewLease(ref, id);
      this.renewFailed = false;
    } catch (e) {
      if (isBlobdiskError(e) && (e.kind === 'busy' || e.kind === 'not-found' || e.kind === 'stale')) {
        this.drop();
        this.lost = true;
        this.onLost(
          e.kind === 'stale'
            ? `${ref.container}/${ref.name} changed in Azure while its lease could not be renewed; nothing of it is overwritten`
            : `lost the lease on ${ref.container}/${ref.name} (${e.kind}); another writer may have taken the blob`,
        );
      } else {
        this.renewFailed = true;
        this.deps.log.warn(`renewing the lease on ${ref.name} failed (${isBlobdiskError(e) ? e.kind : 'error'}); trying again`);
      }
    }
  }

  /** After renewals went unanswered: Acquire Lease with our id and If-Match on the ETag we
   *  know. When that finds the ETag changed, requests of ours may have reached Azure without
   *  their answers reaching us: a renewal that took the lease again once it had run out, then
   *  uploads under it. Azure renews a lease that ran out only while nobody else changed the
   *  blob since, so a plain renewal that succeeds proves every change since was ours (the
   *  uploads whose answers were lost go again anyway); one that fails leaves the stale error. */
  private async retake(ref: BlobRef, id: string): Promise<void> {
    try {
      await this.deps.store.acquireLease(ref, this.deps.seconds, id, this.etag());
    } catch (e) {
      if (!isBlobdiskError(e) || e.kind !== 'stale') throw e;
      try {
        await this.deps.store.renewLease(ref, id);
      } catch {
        throw e;
      }
      this.deps.log.warn(`${ref.container}/${ref.name} changed in Azure under our own lease while its answers did not reach us; keeping the lease`);
    }
  }

  /** Stops renewing and forgets the id, without telling Azure. */
  drop(): void {
    this.timer?.cancel();
    this.timer = undefined;
    this.held = undefined;
    this.lost = false;
    this.renewFailed = false;
  }

  /** Releases the lease; false when none was held or Azure refused (it then expires by itself). */
  async release(): Promise<boolean> {
    const id = this.held;
    if (id === undefined) return false;
    this.drop();
    const ref = this.ref();
    try {
      await this.deps.store.releaseLease(ref, id);
      return true;
    } catch (e) {
      this.deps.log.warn(`releasing the lease on ${ref.name} failed (${isBlobdiskError(e) ? e.kind : 'error'}); it expires by itself within ${this.deps.seconds} s`);
      return false;
    }
  }

  /** Our lease id if we hold the lease, else nothing: for deleting or moving a blob, which a
   *  blob nobody leased allows. */
  heldConditions(): WriteConditions {
    return this.held !== undefined ? { leaseId: this.held } : {};
  }

  /** Conditions every write to Azure carries: our lease id. Without a lease nothing may be
   *  written (busy), so a lost lease stops the uploads at once. */
  conditions(): WriteConditions {
    const ref = this.ref();
    if (this.held === undefined) throw new BlobdiskError('busy', `no lease is held on ${ref.container}/${ref.name}; nothing is written to Azure without it`);
    return { leaseId: this.held };
  }
}
