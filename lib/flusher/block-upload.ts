/* Uploading a block blob: stage new blocks for every committed block that a dirty grain
 * or a size change touches (read-modify-write through the image's UploadSource, so a
 * small write does not restage its neighbours; planBlocks decides), then one Put Block
 * List that keeps the rest. Grains are marked clean after the commit, unless written
 * again or reaching past the size that was committed. */

import crypto from 'node:crypto';
import { SECTOR, runs, sectorsOf } from '../cache/sectors';
import { BlobdiskError } from '../errors';
import { UploadSource } from '../remote/uploads';
import { CommittedBlock, blockSizeFor, planBlocks } from './plan';
import { UploaderDeps, dirtyPast, mayBeClean } from './upload';

/** Runs `jobs` with at most `limit` at a time; rejects with the first failure after all settled. */
async function bounded<T>(items: readonly T[], limit: number, job: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: unknown;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const item = items[next++] as T;
      try {
        await job(item);
      } catch (e) {
        failure ??= e;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failure !== undefined) throw failure;
}

export class BlockUploader {
  constructor(private readonly deps: UploaderDeps) {}

  /** Uploads everything the block blob `image` holds dirty now (see the file's comment). */
  async upload(image: UploadSource): Promise<void> {
    const { ref } = image.remote;
    const g = this.deps.grainSize;
    const info = image.remote.info;
    const size = image.remote.size;
    const cuts = image.remote.cuts;
    const grains = this.deps.cache.dirtyGrains(image.remote.id).map((idx) => ({ idx, gen: this.deps.cache.state(image.remote.id, idx)?.gen ?? -1 }));
    // Changed bytes by dirty sector runs, so a small write does not restage a neighbouring block.
    const changed: { start: number; end: number }[] = [];
    for (const { idx } of grains) {
      const dirty = this.deps.cache.state(image.remote.id, idx)?.dirty;
      for (const [from, to] of dirty ? runs(dirty, sectorsOf(g)) : [[0, sectorsOf(g)] as [number, number]]) {
        changed.push({ start: idx * g + from * SECTOR, end: idx * g + to * SECTOR });
      }
    }
    const intact = Math.min(image.remote.remoteEnd, info.size);
    if (size > intact) changed.push({ start: intact, end: size });
    changed.sort((a, b) => a.start - b.start);

    const listed = info.size > 0 ? await this.deps.store.blockList(ref) : [];
    const committed: CommittedBlock[] = [];
    let at = 0;
    for (const block of listed) {
      committed.push({ id: block.id, start: at, end: at + block.size });
      at += block.size;
    }
    if (committed.length === 0 && info.size > 0) committed.push({ id: undefined, start: 0, end: info.size });
    const firstId = listed[0]?.id;
    let idBytes = firstId !== undefined ? Buffer.from(firstId, 'base64').length : 32;
    const plan = planBlocks(idBytes < 8 ? committed.map((c) => ({ ...c, id: undefined })) : committed, changed, size, blockSizeFor(size, g));
    if (idBytes < 8) idBytes = 32; // every block is staged anew: our ids may have our length
    const ids: string[] = [];
    const stages: { id: string; start: number; end: number }[] = [];
    for (const p of plan) {
      if ('keep' in p) ids.push(p.keep);
      else {
        const id = crypto.randomBytes(idBytes).toString('base64');
        ids.push(id);
        stages.push({ id, ...p.stage });
      }
    }
    await bounded(stages, this.deps.concurrency, async (s) => {
      const data = await image.readForUpload(s.start, s.end - s.start);
      if (data.length !== s.end - s.start) throw new BlobdiskError('failed', `${ref.name} shrank while its blocks were staged; trying again`);
      await this.deps.store.stageBlock(ref, s.id, data, image.remote.writeConditions());
      image.counters.uploads++;
      image.counters.bytesUp += data.length;
    });
    const etag = image.remote.produced(await this.deps.store.commitBlockList(ref, ids, { ...image.remote.writeConditions(), metadata: { ...info.metadata } }));
    image.counters.uploads++;
    // Recorded before any grain is clean: a clean grain may be evicted, and is then read
    // from Azure only if the image's end in Azure covers it.
    image.remote.uploaded({ ...info, size, etag }, cuts);
    for (const { idx, gen } of grains) {
      // A grain reaching past the size this flush committed was written after it began.
      if ((idx + 1) * g > size && dirtyPast(this.deps, image, idx, size)) continue;
      if (!mayBeClean(image, Math.min((idx + 1) * g, size))) continue;
      if (this.deps.cache.state(image.remote.id, idx)?.gen === gen) await this.deps.cache.markUploaded(image.remote.id, idx, gen, await this.deps.cache.readWhole(image.remote.id, idx));
    }
  }
}
