/* The grain map's rows as the rest of blobdisk sees them, and as SQLite returns them
 * (snake_case columns, see schema.ts). */

import { BlobKind } from '../store/types';

export interface ImageRow {
  readonly id: number;
  readonly account: string;
  readonly container: string;
  readonly name: string;
  readonly kind: BlobKind;
  readonly size: number;
  readonly etag: string | null;
  readonly allocated: number | null;
  readonly allocatedEtag: string | null;
  readonly remoteEnd: number | null;
}

export interface GrainRow {
  readonly imageId: number;
  readonly idx: number;
  readonly length: number;
  readonly checksum: number | null;
  readonly valid: Buffer | null;
  readonly dirty: Buffer | null;
  readonly lastAccess: number;
}

/** A dirty grain as an fsync made it durable: its dirty bitmap then (see lib/cache/power.ts). */
export interface SyncedRow {
  readonly imageId: number;
  readonly idx: number;
  readonly dirty: Buffer;
}

export interface RawImage {
  id: number; account: string; container: string; name: string; kind: BlobKind; size: number;
  etag: string | null; allocated: number | null; allocated_etag: string | null; remote_end: number | null;
}
export interface RawGrain {
  image_id: number; idx: number; length: number; checksum: number | null;
  valid: Buffer | null; dirty: Buffer | null; last_access: number;
}

export const toImage = (r: RawImage): ImageRow => ({
  id: r.id, account: r.account, container: r.container, name: r.name, kind: r.kind, size: r.size,
  etag: r.etag, allocated: r.allocated, allocatedEtag: r.allocated_etag, remoteEnd: r.remote_end,
});
export const toGrain = (r: RawGrain): GrainRow => ({
  imageId: r.image_id, idx: r.idx, length: r.length, checksum: r.checksum,
  valid: r.valid, dirty: r.dirty, lastAccess: r.last_access,
});
