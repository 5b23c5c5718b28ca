/* Snapshots, clones and diff over the in-memory store: the `.snapshots` tree of the namespace,
 * the refusals (read-only snapshots, rm of an image with snapshots, writes to a clone still
 * being copied), the operations behind the CLI (lib/namespace/backups.ts), the three diff
 * methods, and the pure pieces (ranges, entry names, paths). The service diff is exact
 * here; on Azurite it is not (test/integration/store-snapshots.test.ts pins that). */

import crypto from 'node:crypto';
import { isBlobdiskError, type ErrorKind } from '../../lib/errors';
import { silentLogger } from '../../lib/log';
import { Backups } from '../../lib/namespace/backups';
import { diffImage } from '../../lib/namespace/diff';
import { Namespace } from '../../lib/namespace/namespace';
import { differing, intersect, subtract } from '../../lib/namespace/ranges';
import { entryNames, snapshotPath } from '../../lib/namespace/snapshots';
import type { SnapshotInfo } from '../../lib/store/types';
import { harness, type Harness } from '../support/image-harness';
import { MemoryStore } from '../support/memory-store';
import { FaultyStore } from '../../lib/store/faulty';
import { DEFAULT_TUNABLES } from '../../lib/tunables';

const KiB = 1024;
const MiB = 1024 * KiB;

async function rejectsWith(p: Promise<unknown>, kind: ErrorKind): Promise<string> {
  try {
    await p;
  } catch (e) {
    if (!isBlobdiskError(e)) throw new Error(`expected BlobdiskError ${kind}, got ${String(e)}`);
    expect(e.kind).toBe(kind);
    return e.message;
  }
  throw new Error(`expected ${kind}, but it resolved`);
}

describe('pure pieces', () => {
  it('range arithmetic', () => {
    const a = [{ start: 0, end: 100 }, { start: 200, end: 300 }];
    const b = [{ start: 50, end: 250 }];
    expect(subtract(a, b)).toEqual([{ start: 0, end: 50 }, { start: 250, end: 300 }]);
    expect(subtract(b, a)).toEqual([{ start: 100, end: 200 }]);
    expect(intersect(a, b)).toEqual([{ start: 50, end: 100 }, { start: 200, end: 250 }]);
    expect(subtract(a, [])).toEqual(a);
    expect(intersect(a, [])).toEqual([]);
    const x = Buffer.alloc(4096);
    const y = Buffer.alloc(4096);
    y[700] = 1;
    y[3000] = 1;
    expect(differing(x, y, 8192, 512)).toEqual([{ start: 8192 + 512, end: 8192 + 1024 }, { start: 8192 + 2560, end: 8192 + 3072 }]);
  });

  it('entry names: the name made safe, or the time; unique, oldest first', () => {
    const snap = (id: string, name?: string): SnapshotInfo => ({
      name: 'd.img', snapshot: id, kind: 'page', size: 512, etag: '"x"', lastModified: new Date(0), metadata: name === undefined ? {} : { blobdisk_snapshot: name },
    });
    const names = entryNames([snap('2026-01-03T00:00:00.0000000Z', 'nightly'), snap('2026-01-01T00:00:00.0000000Z', 'a/b'), snap('2026-01-02T00:00:00.0000000Z', 'nightly'), snap('2026-01-04T00:00:00.0000000Z'), snap('2026-01-05T00:00:00.0000000Z', '..')]);
    expect([...names].map(([n, s]) => [n, s.snapshot.slice(0, 10)])).toEqual([
      ['a_b', '2026-01-01'],
      ['nightly', '2026-01-02'],
      ['nightly~2', '2026-01-03'],
      ['2026-01-04T00:00:00.0000000Z', '2026-01-04'],
      ['2026-01-05T00:00:00.0000000Z', '2026-01-05'],
    ]);
  });

  it('paths in a .snapshots tree', () => {
    expect(snapshotPath({ container: 'c', name: 'vm/disk.img' })).toBeUndefined();
    expect(snapshotPath({ container: 'c', name: '.snapshots' })).toEqual({ container: 'c', dir: '', deeper: false });
    expect(snapshotPath({ container: 'c', name: 'vm/.snapshots/disk.img/x' })).toEqual({ container: 'c', dir: 'vm', image: 'disk.img', entry: 'x', deeper: false });
    expect(snapshotPath({ container: 'c', name: 'vm/.snapshots/disk.img/x/y' })?.deeper).toBe(true);
  });
});

describe('snapshots through the namespace', () => {
  let store: MemoryStore;
  let h: Harness;
  let ns: Namespace;
  let backups: Backups;
  const flushes: string[] = [];

  beforeEach(async () => {
    store = new MemoryStore({ containers: ['c'] });
    h = harness(store);
    ns = new Namespace(store, h.images, { container: 'c', attrTtlMs: 0, readOnly: false, pageBlobPatterns: ['*.img'] }, silentLogger);
    flushes.length = 0;
    backups = new Backups(ns, store, h.images, async (image) => {
      flushes.push(image.ref.name);
      await h.flusher.flush([image], { stallMs: 5000 });
    }, silentLogger);
    await store.createPageBlob({ container: 'c', name: 'vm/disk.img' }, 4 * MiB);
  });
  afterEach(() => h.close());

  it('a snapshot shows under .snapshots, reads its moment through an image, and refuses every write', async () => {
    const a = crypto.randomBytes(64 * KiB);
    const w = await ns.openForWrite('/vm/disk.img');
    await w.write(a, MiB);
    const taken = await backups.snapshot('/vm/disk.img', 'before', 5000, () => undefined);
    expect(flushes).toEqual(['vm/disk.img']);
    expect(taken.path).toBe('/vm/.snapshots/disk.img/before');
    await w.write(crypto.randomBytes(64 * KiB), MiB);

    expect(await ns.readdir('/vm')).toEqual(['disk.img', '.snapshots']);
    expect(await ns.readdir('/vm/.snapshots')).toEqual(['disk.img']);
    expect(await ns.readdir('/vm/.snapshots/disk.img')).toEqual(['before']);
    expect((await ns.getattr('/vm/.snapshots')).writable).toBe(false);
    expect((await ns.getattr('/vm/.snapshots/disk.img')).writable).toBe(false);
    const attrs = await ns.getattr('/vm/.snapshots/disk.img/before');
    expect({ size: attrs.size, writable: attrs.writable, type: attrs.type }).toEqual({ size: 4 * MiB, writable: false, type: 'file' });
    const snap = await ns.open('/vm/.snapshots/disk.img/before');
    expect(snap.ref.snapshot).toBe(taken.snapshot);
    expect(snap.id).not.toBe(w.id);
    expect(await snap.read(MiB, a.length)).toEqual(a);
    expect(await w.read(MiB, a.length)).not.toEqual(a);

    await rejectsWith(ns.openForWrite('/vm/.snapshots/disk.img/before'), 'read-only');
    await rejectsWith(ns.truncate('/vm/.snapshots/disk.img/before', 0), 'read-only');
    await rejectsWith(ns.unlink('/vm/.snapshots/disk.img/before'), 'read-only');
    await rejectsWith(ns.rename('/vm/.snapshots/disk.img/before', '/vm/x.img'), 'read-only');
    await rejectsWith(ns.rename('/vm/disk.img', '/vm/.snapshots/disk.img/x'), 'read-only');
    await rejectsWith(ns.create('/vm/.snapshots/new.img'), 'read-only');
    await rejectsWith(ns.lookup('/vm/.snapshots/disk.img/nope'), 'not-found');
    // A rename would delete the snapshots with the old blob.
    expect(await rejectsWith(ns.rename('/vm/disk.img', '/vm/moved.img'), 'busy')).toContain('blobdisk clone');
    await rejectsWith(ns.rename('/vm', '/vm2'), 'busy');
    await rejectsWith(backups.snapshot('/vm/disk.img', 'caf\u00e9', 5000, () => undefined), 'invalid');
    await rejectsWith(ns.lookup('/vm/.snapshots/other.img'), 'not-found');
  });

  it('rm of an image with snapshots is busy unless withSnapshots; one snapshot can be deleted', async () => {
    await backups.snapshot('/vm/disk.img', 'one', 5000, () => undefined);
    await backups.snapshot('/vm/disk.img', 'two', 5000, () => undefined);
    const message = await rejectsWith(ns.unlink('/vm/disk.img'), 'busy');
    expect(message).toContain('blobdisk rm --with-snapshots');
    await backups.deleteSnapshot('/vm/disk.img', 'one');
    expect(await ns.readdir('/vm/.snapshots/disk.img')).toEqual(['two']);
    await rejectsWith(backups.deleteSnapshot('/vm/disk.img', 'one'), 'not-found');
    await rejectsWith(backups.remove('/vm/disk.img', false), 'busy');
    await backups.remove('/vm/disk.img', true);
    expect(await store.listSnapshots('c', '')).toEqual([]);
    await rejectsWith(store.getInfo({ container: 'c', name: 'vm/disk.img' }), 'not-found');
    await rejectsWith(ns.lookup('/vm/disk.img'), 'not-found');
  });

  it('a clone of an image is that moment; its temporary snapshot goes once the copy is done', async () => {
    const a = crypto.randomBytes(128 * KiB);
    const w = await ns.openForWrite('/vm/disk.img');
    await w.write(a, 0);
    const made = await backups.clone('/vm/disk.img', '/vm/copy.img', 5000, () => undefined);
    expect(made.status).toBe('success');
    expect(made.keptSnapshot).toBeNull();
    expect(await store.listSnapshots('c', '')).toEqual([]);
    expect(store.contentOf({ container: 'c', name: 'vm/copy.img' }).subarray(0, a.length)).toEqual(a);
    await rejectsWith(backups.clone('/vm/disk.img', '/vm/copy.img', 5000, () => undefined), 'exists');
  });

  it('a clone Azure is still copying reads from its snapshot and refuses writes until the copy is done', async () => {
    store.settings.copiesPending = true;
    const a = crypto.randomBytes(64 * KiB);
    const w = await ns.openForWrite('/vm/disk.img');
    await w.write(a, 2 * MiB);
    const taken = await backups.snapshot('/vm/disk.img', 'gold', 5000, () => undefined);
    const made = await backups.clone('/vm/.snapshots/disk.img/gold', '/vm/pending.img', 5000, () => undefined);
    expect(made).toEqual({ path: '/vm/pending.img', status: 'pending', source: taken.snapshot, keptSnapshot: null });
    const reading = await ns.open('/vm/pending.img');
    expect(reading.ref.snapshot).toBe(taken.snapshot);
    expect(await reading.read(2 * MiB, a.length)).toEqual(a);
    const message = await rejectsWith(ns.openForWrite('/vm/pending.img'), 'busy');
    expect(message).toContain('still copying');

    store.finishCopies();
    const own = await ns.openForWrite('/vm/pending.img');
    expect(own.ref).toEqual({ container: 'c', name: 'vm/pending.img' });
    expect(await own.read(2 * MiB, a.length)).toEqual(a);
    await own.write(Buffer.alloc(512, 9), 0);
    expect((await reading.read(0, 512)).equals(Buffer.alloc(512))).toBe(true);
  });

  it('diff: the service, listings and bytes methods on known changes', async () => {
    const ref = { container: 'c', name: 'vm/disk.img' };
    await store.putPages(ref, 0, crypto.randomBytes(MiB));
    await store.putPages(ref, 2 * MiB, crypto.randomBytes(MiB));
    const kept = store.contentOf(ref).subarray(0, 64 * KiB);
    await backups.snapshot('/vm/disk.img', 'base', 5000, () => undefined);
    await store.putPages(ref, 0, kept); // the same bytes written again
    await store.putPages(ref, MiB + 512 * KiB, crypto.randomBytes(4 * KiB)); // new pages
    await store.putPages(ref, 2 * MiB + 4 * KiB, crypto.randomBytes(512)); // changed pages
    await store.clearPages(ref, 2 * MiB + 512 * KiB, 512 * KiB); // cleared pages

    const service = await backups.diff('/vm/disk.img', 'base', 'service', 5000, () => undefined);
    expect({ method: service.method, changed: service.changed, cleared: service.cleared }).toEqual({
      method: 'service',
      changed: [{ start: 0, end: 64 * KiB }, { start: MiB + 512 * KiB, end: MiB + 516 * KiB }, { start: 2 * MiB + 4 * KiB, end: 2 * MiB + 4 * KiB + 512 }],
      cleared: [{ start: 2 * MiB + 512 * KiB, end: 3 * MiB }],
    });
    const listings = await backups.diff('/vm/disk.img', 'base', 'listings', 5000, () => undefined);
    expect({ changed: listings.changed, cleared: listings.cleared, unverified: listings.unverified }).toEqual({
      changed: [{ start: MiB + 512 * KiB, end: MiB + 516 * KiB }],
      cleared: [{ start: 2 * MiB + 512 * KiB, end: 3 * MiB }],
      unverified: [{ start: 0, end: MiB }, { start: 2 * MiB, end: 2 * MiB + 512 * KiB }],
    });
    const bytes = await backups.diff('/vm/disk.img', 'base', 'bytes', 5000, () => undefined);
    expect({ changed: bytes.changed, cleared: bytes.cleared, unverified: bytes.unverified }).toEqual({
      // The rewrite of identical bytes at 0 is no change when bytes are compared.
      changed: [{ start: MiB + 512 * KiB, end: MiB + 516 * KiB }, { start: 2 * MiB + 4 * KiB, end: 2 * MiB + 4 * KiB + 512 }],
      cleared: [{ start: 2 * MiB + 512 * KiB, end: 3 * MiB }],
      unverified: [],
    });
    expect(bytes.bytesCompared).toBe(2 * (MiB + 512 * KiB));
    // auto: the service diff unless the store is the emulator.
    expect((await backups.diff('/vm/disk.img', 'base', 'auto', 5000, () => undefined)).method).toBe('service');
    store.settings.emulator = true;
    expect((await backups.diff('/vm/disk.img', 'base', 'auto', 5000, () => undefined)).method).toBe('bytes');
  });

  it('diff of a block blob by its committed block lists; refused for an unknown snapshot', async () => {
    const ref = { container: 'c', name: 'vm/data.bin' };
    const id = (n: number): string => Buffer.from(`block-${n}`).toString('base64');
    for (const n of [1, 2, 3]) await store.stageBlock(ref, id(n), crypto.randomBytes(MiB));
    await store.commitBlockList(ref, [id(1), id(2), id(3)]);
    await backups.snapshot('/vm/data.bin', 'base', 5000, () => undefined);
    await store.stageBlock(ref, id(4), crypto.randomBytes(MiB));
    await store.commitBlockList(ref, [id(1), id(4)]); // block 2 replaced, block 3 cut off
    const d = await backups.diff('/vm/data.bin', 'base', 'auto', 5000, () => undefined);
    expect({ method: d.method, changed: d.changed, cleared: d.cleared, unverified: d.unverified }).toEqual({
      method: 'blocks', changed: [{ start: MiB, end: 2 * MiB }], cleared: [{ start: 2 * MiB, end: 3 * MiB }], unverified: [],
    });
    const bytes = await backups.diff('/vm/data.bin', 'base', 'bytes', 5000, () => undefined);
    expect({ method: bytes.method, changed: bytes.changed, cleared: bytes.cleared }).toEqual({ method: 'bytes', changed: [{ start: MiB, end: 2 * MiB }], cleared: [{ start: 2 * MiB, end: 3 * MiB }] });
    await rejectsWith(backups.diff('/vm/data.bin', 'base', 'service', 5000, () => undefined), 'invalid');
    await rejectsWith(backups.diff('/vm/disk.img', 'nope', 'auto', 5000, () => undefined), 'not-found');
    await expect(diffImage(store, { container: 'c', name: 'vm/disk.img' }, 'page', 4 * MiB, 'nope', 4 * MiB, 'service')).rejects.toThrow();
  });
});

describe('snapshots while Azure does not answer', () => {
  it('ls of a directory does not wait for its snapshot listing: it shows no .snapshots meanwhile', async () => {
    const memory = new MemoryStore({ containers: ['c'] });
    const store = new FaultyStore(memory);
    const h = harness(store);
    const ns = new Namespace(store, h.images, { container: 'c', attrTtlMs: 0, readOnly: false, pageBlobPatterns: ['*.img'] }, silentLogger);
    try {
      await memory.createPageBlob({ container: 'c', name: 'vm/disk.img' }, MiB);
      await memory.createSnapshot({ container: 'c', name: 'vm/disk.img' });
      expect(await ns.readdir('/vm')).toEqual(['disk.img', '.snapshots']);
      store.inject({ ops: ['listSnapshots'], times: Infinity, action: { kind: 'hang' } });
      await new Promise((r) => setTimeout(r, 5)); // past the listing's TTL of 0
      const started = Date.now();
      expect(await ns.readdir('/vm')).toEqual(['disk.img']);
      expect(Date.now() - started).toBeLessThan(DEFAULT_TUNABLES.staleAnswerMs + 2000);
      store.heal();
      expect(await ns.readdir('/vm')).toEqual(['disk.img', '.snapshots']);
    } finally {
      store.heal();
      await h.close();
    }
  });
});
