/* One contract, two implementations: AzureStore on a real Azurite and the MemoryStore fake
 * must behave the same for everything blobdisk relies on (types.ts). */

import { randomBytes } from 'node:crypto';
import { isBlobdiskError, type ErrorKind } from '../../lib/errors';
import { AzureStore, DEVSTORE_ACCOUNT, DEVSTORE_KEY } from '../../lib/store/azure';
import { MeteredStore } from '../../lib/store/metered';
import type { BlobRef, BlobStore } from '../../lib/store/types';
import { startTestAzurite } from '../support/azurite';
import { MemoryStore } from '../support/memory-store';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

interface Harness {
  /** The store under test, metered. */
  readonly store: MeteredStore;
  /** The same kind of store, on an endpoint that refuses connections (none for the fake). */
  readonly offline?: BlobStore;
  /** A second client of the same account: another host, for lease tests. */
  readonly other: BlobStore;
  done(): Promise<void>;
}

const implementations: [string, () => Promise<Harness>][] = [
  [
    'AzureStore on Azurite',
    async () => {
      const az = await startTestAzurite();
      const other = new AzureStore(az.storeOptions);
      const offline = new AzureStore({
        credentials: { kind: 'accountKey', account: DEVSTORE_ACCOUNT, accountKey: DEVSTORE_KEY, endpoint: `http://127.0.0.1:1/${DEVSTORE_ACCOUNT}` },
        maxTries: 1,
        tryTimeoutMs: 1000,
      });
      return { store: new MeteredStore(az.store), other, offline, done: async () => { await other.close(); await offline.close(); await az.stop(); } };
    },
  ],
  [
    'MemoryStore',
    async () => {
      const store = new MemoryStore();
      return { store: new MeteredStore(store), other: store, done: () => store.close() };
    },
  ],
];

async function rejectsWith(p: Promise<unknown>, code: ErrorKind): Promise<Error> {
  try {
    await p;
  } catch (e) {
    if (!isBlobdiskError(e)) throw new Error(`expected BlobdiskError ${code}, got ${String(e)}`);
    expect(e.kind).toBe(code);
    return e;
  }
  throw new Error(`expected ${code}, but it resolved`);
}

async function readAll(store: BlobStore, ref: BlobRef, offset: number, length: number, etag?: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const part of await store.read(ref, offset, length, etag === undefined ? {} : { etag })) parts.push(part);
  return Buffer.concat(parts);
}

/** Buffer comparison without jest's per-byte diff, which takes seconds per MiB. */
function expectBytes(actual: Buffer, expected: Buffer): void {
  if (actual.equals(expected)) return;
  const at = actual.findIndex((byte, i) => byte !== expected[i]);
  throw new Error(`bytes differ: got ${actual.length} bytes, expected ${expected.length}; first difference at ${at}`);
}

describe.each(implementations)('BlobStore contract: %s', (_label, makeHarness) => {
  let h: Harness;
  let store: MeteredStore;
  const C = 'contract';
  const ref = (name: string): BlobRef => ({ container: C, name });

  beforeAll(async () => {
    h = await makeHarness();
    store = h.store;
    await store.createContainer(C);
  });
  afterAll(() => h.done());

  test('containers: list, check, create', async () => {
    await store.createContainer('second-one');
    expect(await store.listContainers()).toEqual(expect.arrayContaining([C, 'second-one']));
    await store.checkContainer(C);
    const e = await rejectsWith(store.checkContainer('no-such-container'), 'not-found');
    expect(e.message).toContain('no-such-container');
    await rejectsWith(store.createContainer(C), 'exists');
  });

  test('listDirectory: one level, prefixes and hdi_isfolder markers', async () => {
    const L = 'listing';
    await store.createContainer(L);
    const r = (name: string): BlobRef => ({ container: L, name });
    await store.createPageBlob(r('top.img'), 4096);
    await store.createBlockBlob(r('dir'), { metadata: { Hdi_IsFolder: 'true' } });
    await store.createBlockBlob(r('dir/a.bin'));
    await store.createBlockBlob(r('dir/sub/b.bin'));
    await store.createBlockBlob(r('emptydir'), { metadata: { hdi_isfolder: 'true' } });

    const root = await store.listDirectory(L, '');
    expect(root.blobs.map((b) => b.name).sort()).toEqual(['dir', 'emptydir', 'top.img']);
    expect(root.prefixes).toEqual(['dir/']);
    const dir = root.blobs.find((b) => b.name === 'dir');
    expect(dir?.metadata).toEqual({ hdi_isfolder: 'true' });
    const top = root.blobs.find((b) => b.name === 'top.img');
    expect(top).toMatchObject({ kind: 'page', size: 4096 });
    // A listing's ETag is comparable with getInfo's (Azure lists it unquoted).
    expect(top?.etag).toBe((await store.getInfo(r('top.img'))).etag);

    const sub = await store.listDirectory(L, 'dir/');
    expect(sub.blobs.map((b) => b.name)).toEqual(['dir/a.bin']);
    expect(sub.blobs[0]).toMatchObject({ kind: 'block', size: 0 });
    expect(sub.prefixes).toEqual(['dir/sub/']);
    expect(await store.listDirectory(L, 'nothing/')).toEqual({ blobs: [], prefixes: [] });
    await rejectsWith(store.listDirectory('no-such-container', ''), 'not-found');
  });

  test('getInfo: properties, lower-cased metadata, ENOENT', async () => {
    const etag = await store.createPageBlob(ref('info.img'), 1 * MiB, { metadata: { LogicalSize: '1000' } });
    const info = await store.getInfo(ref('info.img'));
    expect(info).toMatchObject({ name: 'info.img', kind: 'page', size: MiB, etag, metadata: { logicalsize: '1000' } });
    expect(info.lastModified).toBeInstanceOf(Date);
    const e = await rejectsWith(store.getInfo(ref('missing.img')), 'not-found');
    expect(e.message).toContain('missing.img');
    const e2 = await rejectsWith(store.getInfo({ container: 'no-such-container', name: 'x' }), 'not-found');
    expect(e2.message).toContain('no-such-container');
  });

  test('read: ranged bytes, zeros for unwritten pages, ESTALE on another ETag', async () => {
    const r = ref('read.img');
    await store.createPageBlob(r, 1 * MiB);
    const data = randomBytes(8 * KiB);
    const etag = await store.putPages(r, 0, data);
    expectBytes(await readAll(store, r, 100, 1000), data.subarray(100, 1100));
    expectBytes(await readAll(store, r, 0, 8 * KiB, etag), data);
    expectBytes(await readAll(store, r, 64 * KiB, 4 * KiB), Buffer.alloc(4 * KiB));
    expectBytes(await readAll(store, r, 0, 0), Buffer.alloc(0));
    await store.putPages(r, 8 * KiB, randomBytes(512));
    await rejectsWith(readAll(store, r, 0, 512, etag), 'stale');
    await rejectsWith(readAll(store, ref('missing.img'), 0, 512), 'not-found');
  });

  test('pageRanges: sparse 1 GiB blob, merged, clipped, ESTALE', async () => {
    const r = ref('sparse.img');
    await store.createPageBlob(r, 1 * GiB);
    await store.putPages(r, 0, randomBytes(8 * KiB));
    await store.putPages(r, 8 * KiB, randomBytes(8 * KiB)); // adjacent: merged with the first
    await store.putPages(r, 1 * MiB, randomBytes(512));
    let etag = await store.putPages(r, 512 * MiB, randomBytes(4 * MiB));
    expect(await store.pageRanges(r, 0, GiB)).toEqual([
      { start: 0, end: 16 * KiB },
      { start: MiB, end: MiB + 512 },
      { start: 512 * MiB, end: 516 * MiB },
    ]);
    expect(await store.pageRanges(r, 4096, MiB + 100, { etag })).toEqual([
      { start: 4096, end: 16 * KiB },
      { start: MiB, end: MiB + 100 },
    ]);
    expect(await store.pageRanges(r, 2 * MiB, 512 * MiB)).toEqual([]);
    expect(await store.pageRanges(r, GiB - 512, GiB)).toEqual([]);
    expect(await store.pageRanges(r, 10, 10)).toEqual([]);

    etag = await store.clearPages(r, 4 * KiB, 4 * KiB, { ifMatch: etag });
    // A clear larger than one Azure call, guarded by If-Match from start to end.
    const cleared = await store.clearPages(r, 512 * MiB, 6 * MiB, { ifMatch: etag });
    expect((await store.getInfo(r)).etag).toBe(cleared);
    expect(await store.pageRanges(r, 0, GiB)).toEqual([
      { start: 0, end: 4 * KiB },
      { start: 8 * KiB, end: 16 * KiB },
      { start: MiB, end: MiB + 512 },
    ]);
    expectBytes(await readAll(store, r, 4 * KiB, 4 * KiB), Buffer.alloc(4 * KiB));
    await rejectsWith(store.pageRanges(r, 0, GiB, { etag }), 'stale');
    await rejectsWith(store.clearPages(r, 0, 512, { ifMatch: etag }), 'stale');
  });

  test('putPages: limits checked before sending', async () => {
    const r = ref('limits.img');
    await store.createPageBlob(r, 16 * MiB);
    // A store that cannot reach anything still says invalid: nothing was sent.
    for (const s of h.offline ? [store, h.offline] : [store]) {
      await rejectsWith(s.putPages(r, 0, Buffer.alloc(4 * MiB + 512)), 'invalid');
      await rejectsWith(s.putPages(r, 100, Buffer.alloc(512)), 'invalid');
      await rejectsWith(s.putPages(r, 0, Buffer.alloc(1000)), 'invalid');
      await rejectsWith(s.clearPages(r, 0, 100), 'invalid');
      await rejectsWith(s.createPageBlob(ref('odd.img'), 1000), 'invalid');
    }
    await store.putPages(r, 0, Buffer.alloc(4 * MiB, 1)); // exactly 4 MiB is fine
  });

  test('block blobs: blocks of different sizes, block list, metadata kept by a commit', async () => {
    const r = ref('blocks.bin');
    await store.createBlockBlob(r, { metadata: { Keep: 'yes' } });
    expect(await store.blockList(r)).toEqual([]);
    const id = (n: number): string => Buffer.from(`block-${String(n).padStart(6, '0')}`).toString('base64');
    const a = randomBytes(4 * MiB);
    const b = randomBytes(9 * MiB);
    await store.stageBlock(r, id(1), a);
    await store.stageBlock(r, id(2), b);
    const etag = await store.commitBlockList(r, [id(1), id(2)]);
    expect(await store.blockList(r)).toEqual([
      { id: id(1), size: 4 * MiB },
      { id: id(2), size: 9 * MiB },
    ]);
    const info = await store.getInfo(r);
    expect(info).toMatchObject({ kind: 'block', size: 13 * MiB, etag, metadata: { keep: 'yes' } });
    expectBytes(await readAll(store, r, 4 * MiB - 100, 200), Buffer.concat([a.subarray(-100), b.subarray(0, 100)]));

    // Re-commit: keep the first block, replace the second, set new metadata.
    const c = randomBytes(1 * MiB);
    await store.stageBlock(r, id(3), c);
    await store.commitBlockList(r, [id(1), id(3)], { ifMatch: etag, metadata: { Other: '1' } });
    expect((await store.blockList(r)).map((x) => x.size)).toEqual([4 * MiB, 1 * MiB]);
    expect((await store.getInfo(r)).metadata).toEqual({ other: '1' });
    await rejectsWith(store.commitBlockList(r, [id(1)], { ifMatch: etag }), 'stale');
    await rejectsWith(store.commitBlockList(r, [id(1), id(9)]), 'invalid');
  });

  test('create-only, overwrite, resize, metadata, delete', async () => {
    const r = ref('create.img');
    const first = await store.createPageBlob(r, 4096);
    await rejectsWith(store.createPageBlob(r, 4096), 'exists');
    await rejectsWith(store.createBlockBlob(r), 'exists');
    const second = await store.createPageBlob(r, 8192, { overwrite: true });
    expect(second).not.toBe(first);
    await store.putPages(r, 4096, Buffer.alloc(4096, 7));
    const grown = await store.resizePageBlob(r, 1 * MiB);
    expect((await store.getInfo(r)).size).toBe(MiB);
    await rejectsWith(store.resizePageBlob(r, 1000), 'invalid');
    await store.resizePageBlob(r, 4096, { ifMatch: grown });
    expect(await store.pageRanges(r, 0, MiB)).toEqual([]);
    const m = await store.setMetadata(r, { Size: '42' });
    expect(await store.getInfo(r)).toMatchObject({ etag: m, metadata: { size: '42' }, size: 4096 });
    await rejectsWith(store.setMetadata(r, {}, { ifMatch: grown }), 'stale');
    await store.deleteBlob(r);
    await rejectsWith(store.getInfo(r), 'not-found');
    await rejectsWith(store.deleteBlob(r), 'not-found');
  });

  test('leases: one writer, EBUSY for others and for writes without the lease', async () => {
    const r = ref('leased.img');
    await store.createPageBlob(r, 1 * MiB);
    await rejectsWith(store.acquireLease(r, 5), 'invalid');
    const lease = await store.acquireLease(r, 15);
    await rejectsWith(h.other.acquireLease(r, 15), 'busy');
    await rejectsWith(h.other.putPages(r, 0, Buffer.alloc(512)), 'busy');
    await rejectsWith(store.putPages(r, 0, Buffer.alloc(512), { leaseId: '00000000-0000-0000-0000-000000000001' }), 'busy');
    await rejectsWith(store.setMetadata(r, { a: 'b' }), 'busy');
    await rejectsWith(store.deleteBlob(r), 'busy');
    await rejectsWith(store.createPageBlob(r, 512, { overwrite: true }), 'busy');
    const etag = await store.putPages(r, 0, Buffer.alloc(512, 1), { leaseId: lease });
    await rejectsWith(store.putPages(r, 0, Buffer.alloc(512), { leaseId: lease, ifMatch: '"0x1"' }), 'stale');
    await store.putPages(r, 512, Buffer.alloc(512, 2), { leaseId: lease, ifMatch: etag });
    expectBytes(await readAll(h.other, r, 0, 1024), Buffer.concat([Buffer.alloc(512, 1), Buffer.alloc(512, 2)]));
    await store.renewLease(r, lease);
    await rejectsWith(h.other.renewLease(r, '00000000-0000-0000-0000-000000000002'), 'busy');
    await store.releaseLease(r, lease);
    // Our lease is gone: writing with it is EBUSY, writing without it works again.
    await rejectsWith(store.putPages(r, 0, Buffer.alloc(512), { leaseId: lease }), 'busy');
    await store.putPages(r, 0, Buffer.alloc(512));

    const theirs = await h.other.acquireLease(r, -1, '11111111-2222-3333-4444-555555555555');
    expect(theirs).toBe('11111111-2222-3333-4444-555555555555');
    await rejectsWith(store.acquireLease(r, 60), 'busy');
    await store.breakLease(r);
    const mine = await store.acquireLease(r, 60);
    await store.releaseLease(r, mine);
    await store.breakLease(r); // nothing to break is fine

    const bb = ref('leased.bin');
    await store.createBlockBlob(bb);
    const bl = await store.acquireLease(bb, 15);
    const id = Buffer.from('b-000001').toString('base64');
    await rejectsWith(store.stageBlock(bb, id, Buffer.alloc(100)), 'busy');
    await store.stageBlock(bb, id, Buffer.alloc(100), { leaseId: bl });
    await rejectsWith(store.commitBlockList(bb, [id]), 'busy');
    await store.commitBlockList(bb, [id], { leaseId: bl });
    await store.releaseLease(bb, bl);
  });

  test('copyBlob: page blob and block blob', async () => {
    const src = ref('copy-src.img');
    await store.createPageBlob(src, 64 * MiB, { metadata: { LogicalSize: '123' } });
    const data = randomBytes(64 * KiB);
    await store.putPages(src, 32 * MiB, data);
    const etag = await store.copyBlob(src, ref('copy-dst.img'));
    const info = await store.getInfo(ref('copy-dst.img'));
    expect(info).toMatchObject({ kind: 'page', size: 64 * MiB, etag, metadata: { logicalsize: '123' } });
    expect(await store.pageRanges(ref('copy-dst.img'), 0, 64 * MiB)).toEqual([{ start: 32 * MiB, end: 32 * MiB + 64 * KiB }]);
    expectBytes(await readAll(store, ref('copy-dst.img'), 32 * MiB, 64 * KiB), data);

    const bsrc = ref('copy-src.bin');
    const id = Buffer.from('c-000001').toString('base64');
    const bdata = randomBytes(3 * MiB);
    await store.stageBlock(bsrc, id, bdata);
    await store.commitBlockList(bsrc, [id], { metadata: { kind: 'test' } });
    await store.copyBlob(bsrc, ref('copy-dst.bin'));
    expect(await store.getInfo(ref('copy-dst.bin'))).toMatchObject({ kind: 'block', size: 3 * MiB, metadata: { kind: 'test' } });
    expectBytes(await readAll(store, ref('copy-dst.bin'), 0, 3 * MiB), bdata);
    await rejectsWith(store.copyBlob(ref('missing.img'), ref('copy-none.img')), 'not-found');
  });

  test('counters: requests, bytes up and down', async () => {
    const r = ref('counters.img');
    await store.createPageBlob(r, 1 * MiB);
    const before = { ...store.counters };
    await store.putPages(r, 0, Buffer.alloc(64 * KiB, 3));
    await readAll(store, r, 0, 64 * KiB);
    await store.getInfo(r);
    expect(store.counters.requests).toBeGreaterThanOrEqual(before.requests + 3);
    expect(store.counters.bytesUp).toBe(before.bytesUp + 64 * KiB);
    expect(store.counters.bytesDown).toBe(before.bytesDown + 64 * KiB);
  });
});

describe('MemoryStore test hooks', () => {
  const r: BlobRef = { container: 'hooks', name: 'a.img' };

  test('reads stream in delayed chunks; latency delays every request', async () => {
    const store = new MemoryStore({ containers: ['hooks'], chunkSize: 1024, chunkDelayMs: 50 });
    await store.createPageBlob(r, 4096);
    await store.putPages(r, 0, randomBytes(4096));
    const t0 = Date.now();
    const arrivals: number[] = [];
    for await (const part of await store.read(r, 0, 4096)) arrivals.push(part.length, Date.now() - t0);
    expect(arrivals.filter((_, i) => i % 2 === 0)).toEqual([1024, 1024, 1024, 1024]);
    expect(arrivals[1]).toBeLessThan(40);
    expect(arrivals[7]).toBeGreaterThanOrEqual(140);
    store.settings.latencyMs = 100;
    const t1 = Date.now();
    await store.getInfo(r);
    expect(Date.now() - t1).toBeGreaterThanOrEqual(90);
  });
});
