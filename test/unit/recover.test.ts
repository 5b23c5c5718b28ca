/* `blobdisk recover` on an image whose uploads Azure refuses (a permission, not a conflict):
 * Images.recoverLocal over the in-memory store behind a FaultyStore. --to saves the local
 * version as a new blob (Azure's bytes where nothing is cached, ours where written); then
 * the local changes are gone, the refusal is forgotten, and the image reads as Azure's. */

import crypto from 'node:crypto';
import { BlobdiskError } from '../../lib/errors';
import { FaultyStore } from '../../lib/store/faulty';
import { DEFAULT_TUNABLES } from '../../lib/tunables';
import { harness } from '../support/image-harness';
import { ManualClock, until } from '../support/manual-clock';
import { MemoryStore } from '../support/memory-store';

const G = 64 * 1024;
const page = { container: 'c', name: 'disk.img' };
const block = { container: 'c', name: 'notes.bin' };

async function readAll(memory: MemoryStore, ref: { container: string; name: string }): Promise<Buffer> {
  const info = await memory.getInfo(ref);
  const parts: Buffer[] = [];
  for await (const chunk of await memory.read(ref, 0, info.size)) parts.push(chunk);
  return Buffer.concat(parts);
}

test.each([
  ['page blob', page],
  ['block blob', block],
])('%s with refused uploads: --to saves the local version, then the image follows Azure and nothing is refused', async (_kind, ref) => {
  const clock = new ManualClock();
  const memory = new MemoryStore({ containers: ['c'], clock });
  const base = crypto.randomBytes(4 * G);
  if (ref === page) {
    await memory.createPageBlob(ref, base.length);
    await memory.putPages(ref, 0, base);
  } else {
    await memory.createBlockBlob(ref);
    await memory.stageBlock(ref, Buffer.from('b-0').toString('base64'), base);
    await memory.commitBlockList(ref, [Buffer.from('b-0').toString('base64')]);
  }
  const faulty = new FaultyStore(memory, clock);
  const h = harness(faulty, { writeBackDelayMs: 100, timing: { clock, tunables: DEFAULT_TUNABLES } });
  try {
    const image = await h.open(ref);
    const refusal = new BlobdiskError('denied', 'upload failed: the SAS token does not allow writing blobs (403 AuthorizationPermissionMismatch)');
    const heal = faulty.inject({ ops: ['putPages', 'stageBlock'], times: Infinity, action: { kind: 'fail', error: refusal } });
    const ours = crypto.randomBytes(G / 2);
    await image.write(ours, G + 512);
    await clock.advance(100);
    await until(() => h.flusher.refusedOf(image) !== undefined);
    heal(); // the new blob may be written (say, a SAS for another prefix)

    // A save that fails half-way leaves no half-written blob behind, and drops nothing here.
    const dest = { container: 'c', name: `${ref.name}.local` };
    faulty.inject({ ops: ['putPages', 'stageBlock'], blob: dest, action: { kind: 'fail', error: new BlobdiskError('unavailable', 'Azure did not answer') } });
    await expect(h.images.recoverLocal(ref, dest.name)).rejects.toMatchObject({ kind: 'unavailable' });
    await expect(memory.getInfo(dest)).rejects.toMatchObject({ kind: 'not-found' });
    expect(h.cache.dirtyOf(image.id).bytes).toBe(G / 2);

    const result = await h.images.recoverLocal(ref, `${ref.name}.local`);
    expect(result).toEqual({ outcome: 'saved', dirtyBytes: G / 2, gone: false });
    const saved = Buffer.from(base);
    ours.copy(saved, G + 512);
    expect((await memory.getInfo({ container: 'c', name: `${ref.name}.local` })).kind).toBe(ref === page ? 'page' : 'block');
    expect((await readAll(memory, { container: 'c', name: `${ref.name}.local` })).equals(saved)).toBe(true);
    expect((await readAll(memory, ref)).equals(base)).toBe(true);

    expect(h.flusher.refusedOf(image)).toBeUndefined();
    expect(image.needsUpload()).toBe(false);
    expect(h.cache.dirtyOf(image.id).bytes).toBe(0);
    expect((await image.read(0, 4 * G)).equals(base)).toBe(true);
    expect(await h.images.recoverLocal(ref, undefined)).toEqual({ outcome: 'nothing', dirtyBytes: 0, gone: false });
    // A name that exists is refused before anything is written.
    await image.write(ours, 0);
    await expect(h.images.recoverLocal(ref, `${ref.name}.local`)).rejects.toMatchObject({ kind: 'exists' });
    expect(h.cache.dirtyOf(image.id).bytes).toBe(G / 2);
  } finally {
    await h.close();
  }
}, 30_000);

test('a lease lost while the mount runs (another writer broke it and wrote): --to saves ours, the image follows Azure and is writable again', async () => {
  const clock = new ManualClock();
  const memory = new MemoryStore({ containers: ['c'], clock });
  const base = crypto.randomBytes(4 * G);
  await memory.createPageBlob(page, base.length);
  await memory.putPages(page, 0, base);
  const h = harness(memory, { writeBackDelayMs: 600_000, timing: { clock, tunables: DEFAULT_TUNABLES } });
  try {
    const image = await h.open(page);
    await image.remote.takeLease();
    const ours = crypto.randomBytes(G);
    await image.write(ours, G);
    // Another host breaks the lease and writes; our next renewal finds the lease gone.
    await memory.breakLease(page);
    const theirs = crypto.randomBytes(G);
    await memory.putPages(page, 2 * G, theirs);
    await clock.advance((DEFAULT_TUNABLES.leaseSeconds * 1000) / 3);
    await until(() => image.conflict !== undefined);
    expect(image.remote.lease.state).toBe('lost');
    await expect(image.write(ours, 0)).rejects.toMatchObject({ kind: 'conflict' });

    expect(await h.images.recoverLocal(page, 'disk-local.img')).toEqual({ outcome: 'saved', dirtyBytes: G, gone: false });
    const azureNow = Buffer.from(base);
    theirs.copy(azureNow, 2 * G);
    const saved = Buffer.from(azureNow);
    ours.copy(saved, G);
    expect((await readAll(memory, { container: 'c', name: 'disk-local.img' })).equals(saved)).toBe(true);
    expect((await readAll(memory, page)).equals(azureNow)).toBe(true);
    expect({ conflict: image.conflict, lease: image.remote.lease.state, dirty: h.cache.dirtyOf(image.id).bytes }).toEqual({ conflict: undefined, lease: 'none', dirty: 0 });
    expect((await image.read(0, 4 * G)).equals(azureNow)).toBe(true);
    // Writable again: the next upload takes a fresh lease.
    await image.write(ours, 3 * G);
    await h.flusher.pass(image);
    expect(h.cache.dirtyOf(image.id).bytes).toBe(0);
    ours.copy(azureNow, 3 * G);
    expect((await readAll(memory, page)).equals(azureNow)).toBe(true);
  } finally {
    await h.close();
  }
}, 30_000);
