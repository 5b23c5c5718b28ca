/* The snapshot part of the store contract (types.ts), on a real Azurite and on the MemoryStore
 * fake: snapshots keep their moment, read and list like blobs, are refused writes, delete
 * alone or with their blob; copies start from a snapshot; the page-range diff. Azurite's
 * diff ignores the snapshot (DESIGN.md): the exact diff is pinned on the fake only, and on
 * Azurite the test pins the wrong answer, so a fixed Azurite shows up here. */

import { randomBytes } from 'node:crypto';
import { isBlobdiskError, type ErrorKind } from '../../lib/errors';
import type { BlobRef, BlobStore } from '../../lib/store/types';
import { startTestAzurite } from '../support/azurite';
import { MemoryStore } from '../support/memory-store';

const KiB = 1024;
const MiB = 1024 * KiB;

const implementations: [string, () => Promise<{ store: BlobStore; exactDiff: boolean; done: () => Promise<void> }>][] = [
  [
    'AzureStore on Azurite',
    async () => {
      const az = await startTestAzurite();
      return { store: az.store, exactDiff: false, done: () => az.stop() };
    },
  ],
  [
    'MemoryStore',
    async () => {
      const store = new MemoryStore();
      return { store, exactDiff: true, done: () => store.close() };
    },
  ],
];

async function rejectsWith(p: Promise<unknown>, kind: ErrorKind): Promise<void> {
  try {
    await p;
  } catch (e) {
    if (!isBlobdiskError(e)) throw new Error(`expected BlobdiskError ${kind}, got ${String(e)}`);
    expect(e.kind).toBe(kind);
    return;
  }
  throw new Error(`expected ${kind}, but it resolved`);
}

async function readAll(store: BlobStore, ref: BlobRef, offset: number, length: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const part of await store.read(ref, offset, length)) parts.push(part);
  return Buffer.concat(parts);
}

describe.each(implementations)('BlobStore snapshots: %s', (_label, make) => {
  let store: BlobStore;
  let exactDiff: boolean;
  let done: () => Promise<void>;
  const C = 'snaps';
  const ref = (name: string, snapshot?: string): BlobRef => ({ container: C, name, ...(snapshot !== undefined ? { snapshot } : {}) });

  beforeAll(async () => {
    ({ store, exactDiff, done } = await make());
    await store.createContainer(C);
  });
  afterAll(() => done());

  test('a snapshot keeps its moment, lists with its metadata, and is read-only', async () => {
    const a = randomBytes(64 * KiB);
    await store.createPageBlob(ref('d/one.img'), 4 * MiB, { metadata: { blobdisk_size: '4194303' } });
    await store.putPages(ref('d/one.img'), MiB, a);
    const id = await store.createSnapshot(ref('d/one.img'), { blobdisk_size: '4194303', blobdisk_snapshot: 'before' });
    expect(id).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z$/);
    await store.putPages(ref('d/one.img'), MiB, randomBytes(64 * KiB));

    expect(await readAll(store, ref('d/one.img', id), MiB, a.length)).toEqual(a);
    expect(await store.pageRanges(ref('d/one.img', id), 0, 4 * MiB)).toEqual([{ start: MiB, end: MiB + a.length }]);
    const info = await store.getInfo(ref('d/one.img', id));
    expect(info.size).toBe(4 * MiB);
    expect(info.metadata.blobdisk_snapshot).toBe('before');

    // One level, or with `deep` also what lies in subdirectories.
    await store.createPageBlob(ref('d/sub/deeper.img'), 512);
    const deeper = await store.createSnapshot(ref('d/sub/deeper.img'));
    const listed = await store.listSnapshots(C, 'd/');
    expect(listed.map((s) => [s.name, s.snapshot, s.metadata.blobdisk_snapshot])).toEqual([['d/one.img', id, 'before']]);
    expect((await store.listSnapshots(C, 'd/', true)).map((s) => [s.name, s.snapshot])).toEqual([['d/one.img', id], ['d/sub/deeper.img', deeper]]);
    expect((await store.listSnapshots(C, 'd/one')).map((s) => s.name)).toEqual(['d/one.img']);
    // The blob itself is not in the snapshot listing.
    expect(listed.every((s) => s.snapshot !== '')).toBe(true);

    await rejectsWith(store.createSnapshot(ref('d/one.img', id)), 'invalid');
    await rejectsWith(store.startCopy(ref('d/one.img'), ref('d/one.img', id)), 'invalid');
  });

  test('snapshots of one blob are listed oldest first; deleting one leaves the others, deleting the blob takes all', async () => {
    await store.createPageBlob(ref('two.img'), MiB);
    const first = await store.createSnapshot(ref('two.img'));
    await store.putPages(ref('two.img'), 0, Buffer.alloc(512, 7));
    const second = await store.createSnapshot(ref('two.img'));
    expect(second > first).toBe(true);
    const ids = async (): Promise<string[]> => (await store.listSnapshots(C, 'two.img')).filter((s) => s.name === 'two.img').map((s) => s.snapshot);
    expect(await ids()).toEqual([first, second]);

    await store.deleteBlob(ref('two.img', first));
    expect(await ids()).toEqual([second]);
    expect((await store.getInfo(ref('two.img'))).size).toBe(MiB);
    await rejectsWith(store.getInfo(ref('two.img', first)), 'not-found');

    await store.deleteBlob(ref('two.img'));
    expect(await ids()).toEqual([]);
  });

  test('a copy from a snapshot has the snapshot\'s bytes and the metadata given', async () => {
    const a = randomBytes(128 * KiB);
    await store.createPageBlob(ref('src.img'), 2 * MiB);
    await store.putPages(ref('src.img'), 512 * KiB, a);
    const id = await store.createSnapshot(ref('src.img'));
    await store.clearPages(ref('src.img'), 512 * KiB, a.length);

    const status = await store.startCopy(ref('src.img', id), ref('copy.img'), { blobdisk_clone_of: 'x' });
    expect(['success', 'pending']).toContain(status);
    let info = await store.getInfo(ref('copy.img'));
    for (let i = 0; info.copyStatus === 'pending' && i < 50; i++) {
      await new Promise((r) => setTimeout(r, 100));
      info = await store.getInfo(ref('copy.img'));
    }
    expect(info.copyStatus).toBe('success');
    expect(info.metadata.blobdisk_clone_of).toBe('x');
    expect(info.kind).toBe('page');
    expect(await readAll(store, ref('copy.img'), 512 * KiB, a.length)).toEqual(a);
  });

  test('page-range diff since a snapshot', async () => {
    await store.createPageBlob(ref('diff.img'), 4 * MiB);
    await store.putPages(ref('diff.img'), 0, randomBytes(64 * KiB));
    await store.putPages(ref('diff.img'), 2 * MiB, randomBytes(64 * KiB));
    const id = await store.createSnapshot(ref('diff.img'));
    await store.putPages(ref('diff.img'), MiB, randomBytes(8 * KiB));
    await store.clearPages(ref('diff.img'), 2 * MiB, 64 * KiB);

    const diff = await store.pageRangesDiff(ref('diff.img'), id, 0, 4 * MiB);
    if (exactDiff) {
      expect(diff).toEqual({ changed: [{ start: MiB, end: MiB + 8 * KiB }], cleared: [{ start: 2 * MiB, end: 2 * MiB + 64 * KiB }] });
    } else {
      // Azurite: every allocated range, as if the snapshot were not given, and no cleared ranges.
      expect(diff.changed).toEqual([{ start: 0, end: 64 * KiB }, { start: MiB, end: MiB + 8 * KiB }]);
      expect(diff.cleared).toEqual([]);
    }
    expect(store.emulator).toBe(!exactDiff);
  });
});
