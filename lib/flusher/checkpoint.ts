/* Taking a checkpoint once its barrier's grains are all in Azure (the barrier's table is in
 * lib/remote/checkpoint.ts): an Azure snapshot of the blob named checkpoint-<F's UTC time>,
 * then the image's checkpoints beyond the newest N are deleted. Only snapshots carrying
 * blobdisk_checkpoint count: snapshots users took are never pruned. */

import { CHECKPOINT_KEY, Checkpoints, SNAPSHOT_NAME_KEY } from '../remote/checkpoint';
import { UploadSource } from '../remote/uploads';
import { BlobStore } from '../store/types';
import { Logger } from '../log';

/** Metadata a pending clone reads its source through (lib/namespace/clones.ts): a checkpoint
 *  holds the copied bytes, not a link. */
const CLONE_SOURCE_KEY = 'blobdisk_clone_of';

/** Snapshots the blob as the barrier `cp` describes it, closes the barrier, prunes. A failure
 *  of the snapshot rejects (the barrier stays open, the flusher tries again); a failure of
 *  the pruning is logged only (the next checkpoint prunes again). */
export async function takeCheckpoint(store: BlobStore, image: UploadSource, cp: Checkpoints, log: Logger): Promise<void> {
  const { ref } = image.remote;
  const info = await store.getInfo(ref);
  const metadata: Record<string, string> = { ...info.metadata };
  delete metadata[CLONE_SOURCE_KEY];
  metadata[CHECKPOINT_KEY] = cp.time;
  metadata[SNAPSHOT_NAME_KEY] = `checkpoint-${cp.time}`;
  const id = await store.createSnapshot(ref, metadata);
  image.counters.uploads++;
  log.info(`checkpoint ${metadata[SNAPSHOT_NAME_KEY]} of ${ref.container}/${ref.name} taken (${id})`);
  cp.close();
  try {
    await prune(store, image, cp.options.keep);
  } catch (e) {
    log.warn(`deleting old checkpoints of ${ref.container}/${ref.name} failed (${(e as Error).message}); the next checkpoint tries again`);
  }
}

/** Deletes the image's checkpoints beyond the newest `keep`. */
export async function prune(store: BlobStore, image: UploadSource, keep: number): Promise<number> {
  const { ref } = image.remote;
  const mine = (await store.listSnapshots(ref.container, ref.name)).filter((s) => s.name === ref.name && s.metadata[CHECKPOINT_KEY] !== undefined);
  mine.sort((a, b) => (a.snapshot < b.snapshot ? -1 : a.snapshot > b.snapshot ? 1 : 0));
  const old = mine.slice(0, Math.max(0, mine.length - keep));
  for (const s of old) await store.deleteBlob({ ...ref, snapshot: s.snapshot });
  return old.length;
}
