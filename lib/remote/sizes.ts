/* A page blob's logical size: Azure sizes page blobs in 512-byte pages, so a size that is
 * not a multiple of 512 lives in the blob's metadata. */

import { SECTOR } from '../cache/sectors';
import { BlobInfo } from '../store/types';

/** Metadata key holding a page blob's logical size when it is not a multiple of 512. */
export const LOGICAL_SIZE_KEY = 'blobdisk_size';

/** The size a reader sees: the page blob's logical size from metadata when it is valid, else the blob's. */
export function logicalSize(info: BlobInfo): number {
  const text = info.metadata[LOGICAL_SIZE_KEY];
  if (info.kind === 'page' && text !== undefined && /^\d+$/.test(text)) {
    const n = Number(text);
    if (n <= info.size && n > info.size - 512) return n;
  }
  return info.size;
}

/** The metadata value of LOGICAL_SIZE_KEY a page blob of logical `size` carries (none when sector-aligned). */
export function logicalSizeText(size: number): string | undefined {
  return size % SECTOR === 0 ? undefined : String(size);
}
