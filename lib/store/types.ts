/* The blob-store interface: the bottom layer of blobdisk. lib/store/azure/ implements it
 * with @azure/storage-blob; test/support/memory-store.ts implements it in memory for unit
 * tests. Every method rejects only with BlobdiskError (lib/errors.ts), of kind:
 *   not-found     container or blob does not exist
 *   denied        the credentials were refused (403)
 *   busy          the blob is leased by someone else, or our lease is missing/lost
 *   stale         an If-Match condition failed (the blob changed)
 *   exists        create-only and the blob exists
 *   invalid       a request Azure (or the limits below) rejects as malformed
 *   unavailable   Azure unreachable, silent past the deadline, or failing (5xx), after the bounded retries
 *   failed        anything else: an answer we do not understand, or a bug
 * Offsets and lengths are bytes; ranges are half-open [start, end). */

export type BlobKind = 'page' | 'block' | 'append';

export interface BlobRef {
  readonly container: string;
  readonly name: string;
  /** A snapshot of the blob, by Azure's id (its UTC timestamp); absent for the blob itself.
   *  A snapshot reads like its blob; writes to it are refused (invalid). */
  readonly snapshot?: string;
}

export interface BlobInfo {
  /** Full blob name within its container. */
  readonly name: string;
  readonly kind: BlobKind;
  /** Physical content length (for page blobs a multiple of 512). */
  readonly size: number;
  readonly etag: string;
  readonly lastModified: Date;
  /** Metadata with lower-cased keys. */
  readonly metadata: Readonly<Record<string, string>>;
  /** True when someone (maybe us) holds an active lease on the blob; only getInfo reports it. */
  readonly leased?: boolean;
  /** The state of the server-side copy that made the blob, if one did; only getInfo reports it. */
  readonly copyStatus?: CopyStatus;
}

/** A server-side copy: pending until Azure has copied everything, then success (or failed, aborted). */
export type CopyStatus = 'pending' | 'success' | 'failed' | 'aborted';

/** One snapshot of a blob, as a listing describes it (metadata: the snapshot's own). */
export interface SnapshotInfo extends BlobInfo {
  /** Azure's id of the snapshot: the UTC time it was taken, e.g. 2026-12-07T12:00:00.1234567Z. */
  readonly snapshot: string;
}

/** What Get Page Ranges with prevsnapshot reports: pages written since the snapshot, and pages
 *  cleared since (both sorted, merged, half-open). */
export interface PageDiff {
  readonly changed: ByteRange[];
  readonly cleared: ByteRange[];
}

export interface Listing {
  /** Blobs directly under the prefix (names are full blob names). */
  readonly blobs: BlobInfo[];
  /** Virtual sub-directories directly under the prefix, as full prefixes ending in '/'. */
  readonly prefixes: string[];
}

export interface ByteRange {
  readonly start: number;
  readonly end: number;
}

export interface BlockInfo {
  /** Base64 block id as Azure returns it. */
  readonly id: string;
  readonly size: number;
}

export interface WriteConditions {
  /** Lease id to send; required by Azure when the blob is leased. */
  readonly leaseId?: string;
  /** If-Match on this ETag (ESTALE when it differs). */
  readonly ifMatch?: string;
}

export interface ReadOptions {
  /** If-Match on this ETag: ESTALE when the blob changed since. */
  readonly etag?: string;
  readonly signal?: AbortSignal;
}

/** A read's body straight into the caller's buffers (see ReadBody). */
export interface DirectRead {
  /** Fills into[offset, offset + length) with the next bytes; resolves with the count, fewer
   *  only at the end of the body or just before a failure, which the next pull reports.
   *  `progress` hears how many have arrived so far, as they do. */
  pull(into: Buffer, offset: number, length: number, progress?: (filled: number) => void): Promise<number>;
  /** Lets go of the bytes not pulled (closes the connection). */
  cancel(): void;
}

/** A read's body: its bytes in order as they arrive. A store may also offer `direct`, the
 *  same bytes pulled into the caller's own buffers, with no copy and nothing allocated per
 *  chunk; a caller uses one or the other. */
export interface ReadBody extends AsyncIterable<Buffer> {
  readonly direct?: DirectRead;
}

/** Requests and bytes exchanged with a store, as MeteredStore counts them. */
export interface StoreCounters {
  requests: number;
  bytesDown: number;
  bytesUp: number;
}

/** Azure limits the store enforces itself, because Azurite does not. */
export const PAGE_SIZE = 512;
export const MAX_PUT_PAGE_BYTES = 4 * 1024 * 1024;
export const MAX_PAGE_BLOB_BYTES = 8 * 1024 ** 4;
export const MAX_COMMITTED_BLOCKS = 50_000;

/** A store's operations. Counters live in a MeteredStore (metered.ts) that wraps one;
 *  faults for tests in a FaultyStore (faulty.ts). */
export interface BlobStore {
  /** Names of all containers in the account (all pages). */
  listContainers(): Promise<string[]>;
  /** Resolves when the container exists; not-found when not. */
  checkContainer(container: string): Promise<void>;
  createContainer(container: string): Promise<void>;

  /** One directory level: blobs and sub-prefixes directly under `prefix` ('' or ending in '/'), all pages. */
  listDirectory(container: string, prefix: string): Promise<Listing>;
  /** Properties of one blob; not-found when absent. */
  getInfo(ref: BlobRef): Promise<BlobInfo>;

  /** Ranged GET of [offset, offset + length), clipped by the caller to the blob size.
   *  The returned iterable yields the bytes in order as they arrive; its total is `length`.
   *  With `etag`, stale when the blob no longer has it (before or while streaming). */
  read(ref: BlobRef, offset: number, length: number, options?: ReadOptions): Promise<ReadBody>;
  /** Allocated page ranges of a page blob intersecting [start, end), clipped to it,
   *  sorted and with adjacent ranges merged. With `etag`, stale when it changed. */
  pageRanges(ref: BlobRef, start: number, end: number, options?: ReadOptions): Promise<ByteRange[]>;
  /** Committed blocks of a block blob in order (empty for a blob uploaded in one Put Blob). */
  blockList(ref: BlobRef): Promise<BlockInfo[]>;

  /** Creates (or with `overwrite` replaces) an empty page blob of `size` (multiple of 512, ≤ 8 TiB). Returns the ETag.
   *  Without `overwrite`, exists when the blob exists. */
  createPageBlob(ref: BlobRef, size: number, options?: { metadata?: Record<string, string>; overwrite?: boolean }): Promise<string>;
  /** Creates (or with `overwrite` replaces) an empty block blob. Returns the ETag. EEXIST as above. */
  createBlockBlob(ref: BlobRef, options?: { metadata?: Record<string, string>; overwrite?: boolean }): Promise<string>;
  /** Sets a page blob's size (multiple of 512). Returns the ETag. */
  resizePageBlob(ref: BlobRef, size: number, conditions?: WriteConditions): Promise<string>;
  /** Put Page: `offset` and `data.length` multiples of 512, data at most 4 MiB (EINVAL otherwise). Returns the ETag. */
  putPages(ref: BlobRef, offset: number, data: Buffer, conditions?: WriteConditions): Promise<string>;
  /** Clear Pages of [offset, offset + length): 512-aligned, at most 4 MiB per call is the caller's
   *  business only for Put Page; this method splits larger clears itself. Returns the ETag. */
  clearPages(ref: BlobRef, offset: number, length: number, conditions?: WriteConditions): Promise<string>;
  /** Stages one uncommitted block (`blockId` base64, equal length for all ids of a blob). */
  stageBlock(ref: BlobRef, blockId: string, data: Buffer, conditions?: WriteConditions): Promise<void>;
  /** Commits the block list (in order), replacing metadata when given. Returns the ETag. */
  commitBlockList(ref: BlobRef, blockIds: string[], options?: WriteConditions & { metadata?: Record<string, string> }): Promise<string>;
  /** Replaces the blob's metadata. Returns the ETag. */
  setMetadata(ref: BlobRef, metadata: Record<string, string>, conditions?: WriteConditions): Promise<string>;
  /** Deletes the blob (and its snapshots); with `ref.snapshot`, that one snapshot only.
   *  not-found when absent. */
  deleteBlob(ref: BlobRef, conditions?: WriteConditions): Promise<void>;
  /** Server-side copy within the account; resolves when the copy has completed. Returns the new ETag. */
  copyBlob(source: BlobRef, target: BlobRef): Promise<string>;

  /** Takes a snapshot of the blob, carrying `metadata` when given (else the blob's own).
   *  Returns the snapshot's id. */
  createSnapshot(ref: BlobRef, metadata?: Record<string, string>): Promise<string>;
  /** Snapshots of the blobs whose names start with `prefix`: one directory level (no '/'
   *  after the prefix), or with `deep` at any depth; all pages, sorted by blob name, then by
   *  snapshot id (oldest first). */
  listSnapshots(container: string, prefix: string, deep?: boolean): Promise<SnapshotInfo[]>;
  /** Starts a server-side copy of `source` (a blob or a snapshot) to `target`, which gets
   *  `metadata` (the source's when absent); resolves with the copy's state right after the
   *  start: success when Azure finished at once, else pending (getInfo follows it). */
  startCopy(source: BlobRef, target: BlobRef, metadata?: Record<string, string>): Promise<CopyStatus>;
  /** Get Page Ranges with prevsnapshot: the pages of a page blob written or cleared since its
   *  snapshot `since`, within [start, end). Azurite answers it wrongly (see `emulator`). */
  pageRangesDiff(ref: BlobRef, since: string, start: number, end: number): Promise<PageDiff>;
  /** True when the service is the Azurite emulator (a path-style endpoint, like
   *  http://127.0.0.1:10000/devstoreaccount1), whose page-range diff ignores the snapshot. */
  readonly emulator: boolean;

  /** Acquires a lease (15–60 s, or -1 for infinite). busy when someone else holds one. Returns
   *  the lease id. With `ifMatch`, only while the blob's ETag is that (stale otherwise), in
   *  the same request: a lease retaken after an outage must not adopt a foreign change. */
  acquireLease(ref: BlobRef, durationSeconds: number, proposedLeaseId?: string, ifMatch?: string): Promise<string>;
  renewLease(ref: BlobRef, leaseId: string): Promise<void>;
  releaseLease(ref: BlobRef, leaseId: string): Promise<void>;
  /** Breaks any lease at once (for tests and `blobdisk` recovery commands). */
  breakLease(ref: BlobRef): Promise<void>;

  /** Frees sockets and timers; nothing may be called afterwards. */
  close(): Promise<void>;
}
