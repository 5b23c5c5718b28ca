/* A clone is a server-side copy of a snapshot (Copy Blob). Azure may take a while to copy;
 * until its copy status says success, the mount serves reads of the clone from the snapshot
 * it was made from, which the clone names in its metadata (blobdisk_clone_of), and refuses
 * to open it for writing (busy). Azurite, and Azure for a page blob in the same account,
 * usually finish at once. */

import type { BlobInfo, BlobRef } from '../store/types';

/** Metadata key naming the snapshot a clone was copied from: container/blob?snapshot=id, URI-encoded. */
export const CLONE_SOURCE_KEY = 'blobdisk_clone_of';

/** The metadata value naming `source` (metadata values must be ASCII). */
export function cloneSourceText(source: BlobRef): string {
  return `${encodeURIComponent(source.container)}/${encodeURIComponent(source.name)}?snapshot=${encodeURIComponent(source.snapshot ?? '')}`;
}

/** The snapshot a clone still being copied reads from; undefined once the copy is done (or
 *  for anything else). */
export function cloneSource(info: BlobInfo): BlobRef | undefined {
  if (info.copyStatus !== 'pending') return undefined;
  const m = /^([^/]+)\/([^?]+)\?snapshot=(.+)$/.exec(info.metadata[CLONE_SOURCE_KEY] ?? '');
  if (m === null) return undefined;
  try {
    return { container: decodeURIComponent(m[1] ?? ''), name: decodeURIComponent(m[2] ?? ''), snapshot: decodeURIComponent(m[3] ?? '') };
  } catch {
    return undefined;
  }
}
