/* The contract between an open image (lib/image) and the uploader (lib/flusher), which
 * sit side by side and never import each other: the image offers itself as an
 * UploadSource and tells an Uploads when it has something to upload; the flusher is an
 * Uploads and works on the source's RemoteBlob, the cache, and the source's bytes. The
 * layer that builds the stack hands the flusher to the images. */

import { ImageCounters } from '../metrics';
import { Checkpoints } from './checkpoint';
import { RemoteBlob } from './remote';

export interface UploadSource {
  /** The image's Azure-side state: sizes, ETag, lease, conflict. */
  readonly remote: RemoteBlob;
  /** Counters the uploads add to (uploads, bytesUp, bytesCleared). */
  readonly counters: ImageCounters;
  /** Its checkpoint barrier, when it takes checkpoints (a page blob with --checkpoints). */
  readonly checkpoints?: Checkpoints | undefined;
  /** The image's current bytes in [offset, offset + length), fewer at its end: what a block
   *  blob restages around changed bytes. Like a read, without counting as a reader. */
  readForUpload(offset: number, length: number): Promise<Buffer>;
}

export interface FlushProgress {
  readonly dirtyBytes: number;
  readonly startBytes: number;
}

export interface FlushOptions {
  /** Give up (unavailable) when nothing got uploaded for this long. */
  readonly stallMs?: number;
  /** Sees the dirty bytes left. */
  readonly onProgress?: (p: FlushProgress) => void;
}

export interface Uploads {
  /** The source has something to upload: it goes up after the write-back delay. */
  notify(source: UploadSource): void;
  /** Resolves once everything dirty in `sources` now is in Azure; conflict on a conflict, unavailable on a stall. */
  flush(sources: readonly UploadSource[], options?: FlushOptions): Promise<void>;
  /** Runs `fn` while no upload of `source` is under way or may start (a rename); busy when one already runs. */
  exclusive<T>(source: UploadSource, fn: () => Promise<T>): Promise<T>;
  /** The source's local changes were dropped (`blobdisk recover`): forget its queue entry,
   *  its backoff and a refusal of its uploads. */
  discarded(source: UploadSource): void;
}
