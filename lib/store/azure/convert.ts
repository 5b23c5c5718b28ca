/* Between the SDK's shapes and the store's: blob kinds, metadata keys, ETags, write
 * conditions, page ranges; and the Azure limits Azurite does not enforce, checked before
 * a request is sent. */

import type { BlobRequestConditions } from '@azure/storage-blob';
import { BlobdiskError } from '../../errors';
import { MAX_PAGE_BLOB_BYTES, PAGE_SIZE, type BlobKind, type BlobRef, type ByteRange, type WriteConditions } from '../types';

const KINDS: Readonly<Record<string, BlobKind>> = { PageBlob: 'page', BlockBlob: 'block', AppendBlob: 'append' };

export function kindOf(blobType: string | undefined): BlobKind {
  const kind = blobType === undefined ? undefined : KINDS[blobType];
  if (kind === undefined) throw new BlobdiskError('failed', `Azure reported an unknown blob type`);
  return kind;
}

export function lowerKeys(metadata: Record<string, string> | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(metadata ?? {})) out[k.toLowerCase()] = v;
  return out;
}

export function conditionsOf(c: WriteConditions | undefined): BlobRequestConditions {
  const out: BlobRequestConditions = {};
  if (c?.leaseId !== undefined) out.leaseId = c.leaseId;
  if (c?.ifMatch !== undefined) out.ifMatch = c.ifMatch;
  return out;
}

/** Listings carry the ETag bare, headers quoted: give callers one form to compare. */
export function quoteEtag(etag: string): string {
  return etag.startsWith('"') || etag.startsWith('W/') ? etag : `"${etag}"`;
}

export function etagOf(response: { etag?: string }): string {
  if (response.etag === undefined) throw new BlobdiskError('failed', 'Azure answered without an ETag');
  return quoteEtag(response.etag);
}

export function invalid(op: string, ref: BlobRef, why: string): BlobdiskError {
  return new BlobdiskError('invalid', `${op} ${ref.container}/${ref.name} failed: ${why}`);
}

export function checkAligned(op: string, ref: BlobRef, offset: number, length: number, max: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0 || offset % PAGE_SIZE !== 0) throw invalid(op, ref, `offset ${offset} is not a multiple of ${PAGE_SIZE}`);
  if (!Number.isSafeInteger(length) || length <= 0 || length % PAGE_SIZE !== 0) throw invalid(op, ref, `length ${length} is not a positive multiple of ${PAGE_SIZE}`);
  if (length > max) throw invalid(op, ref, `length ${length} exceeds the Azure limit of ${max} bytes per call`);
}

export function checkPageBlobSize(op: string, ref: BlobRef, size: number): void {
  if (!Number.isSafeInteger(size) || size < 0 || size % PAGE_SIZE !== 0 || size > MAX_PAGE_BLOB_BYTES) {
    throw invalid(op, ref, `page blob size ${size} is not a multiple of ${PAGE_SIZE} between 0 and 8 TiB`);
  }
}

/** Sorts, drops empty ranges and merges overlapping or adjacent ones. */
export function mergeRanges(ranges: readonly ByteRange[]): ByteRange[] {
  const sorted = ranges.filter((r) => r.end > r.start).sort((a, b) => a.start - b.start);
  const out: { start: number; end: number }[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last !== undefined && r.start <= last.end) last.end = Math.max(last.end, r.end);
    else out.push({ start: r.start, end: r.end });
  }
  return out;
}
