/* Ranged GETs pulled straight into the caller's buffers (lib/store/azure/direct-get.ts),
 * against a real Azurite behind the fault proxy: the bytes, connection reuse, a body cut
 * short and asked for again, Azure's refusals as BlobdiskErrors, a stalled body bounded by
 * the deadline, and a body left unread. */

import crypto from 'node:crypto';
import { AzureStore } from '../../lib/store/azure';
import { isBlobdiskError } from '../../lib/errors';
import type { DirectRead } from '../../lib/store/types';
import { FaultProxy } from '../support/fault-proxy';
import { startTestAzurite, type TestAzurite } from '../support/azurite';

const MiB = 1024 * 1024;
const ref = { container: 'direct', name: 'disk.img' };
const content = crypto.randomBytes(8 * MiB);
let az: TestAzurite;
let proxy: FaultProxy;

function storeThroughProxy(deadlineMs = 20_000): AzureStore {
  return new AzureStore({
    credentials: { kind: 'connectionString', connectionString: proxy.connectionString(az.azurite.connectionString) },
    maxTries: 3,
    tryTimeoutMs: 30_000,
    deadlineMs,
  });
}

/** Pulls [offset, offset + length) in pieces of `piece` into a buffer on shared memory, as the
 *  fetcher pulls into grain buffers; returns it and the progress reports seen. */
async function pullAll(direct: DirectRead, length: number, piece: number): Promise<{ buf: Buffer; reports: number[] }> {
  const buf = Buffer.from(new SharedArrayBuffer(length));
  const reports: number[] = [];
  let at = 0;
  while (at < length) {
    const base = at;
    const n = await direct.pull(buf, at, Math.min(piece, length - at), (filled) => reports.push(base + filled));
    if (n === 0) break;
    at += n;
  }
  return { buf: buf.subarray(0, at), reports };
}

beforeAll(async () => {
  az = await startTestAzurite();
  proxy = await FaultProxy.start({ port: az.azurite.port });
  await az.store.createContainer(ref.container);
  await az.store.createPageBlob(ref, content.length);
  for (let off = 0; off < content.length; off += 4 * MiB) await az.store.putPages(ref, off, content.subarray(off, off + 4 * MiB));
});

afterEach(() => proxy.remove());

afterAll(async () => {
  await proxy?.close();
  await az?.stop();
});

test('a ranged read is pulled straight into the caller\'s buffer, with progress as bytes arrive, and its connection serves the next reads', async () => {
  const store = storeThroughProxy();
  try {
    const connectionsBefore = proxy.connections;
    for (let i = 0; i < 12; i++) {
      const offset = 512 * 1024 + i * 200 * 512;
      const body = await store.read(ref, offset, 3 * MiB);
      expect(body.direct).toBeDefined();
      const { buf, reports } = await pullAll(body.direct as DirectRead, 3 * MiB, MiB);
      expect(buf.equals(content.subarray(offset, offset + 3 * MiB))).toBe(true);
      // Reports rise, and each pull's last one is where it ended.
      expect(reports.length).toBeGreaterThanOrEqual(3);
      for (let r = 1; r < reports.length; r++) expect(reports[r]).toBeGreaterThan(reports[r - 1] ?? 0);
      expect(reports).toEqual(expect.arrayContaining([MiB, 2 * MiB, 3 * MiB]));
    }
    // One after the other, the twelve GETs share one kept connection.
    expect(proxy.connections - connectionsBefore).toBe(1);
  } finally {
    await store.close();
  }
});

test('iterating a direct body gives the same bytes', async () => {
  const store = storeThroughProxy();
  try {
    const parts: Buffer[] = [];
    for await (const chunk of await store.read(ref, 100 * 512, 2 * MiB + 512)) parts.push(Buffer.from(chunk));
    expect(Buffer.concat(parts).equals(content.subarray(100 * 512, 100 * 512 + 2 * MiB + 512))).toBe(true);
  } finally {
    await store.close();
  }
});

test('a body reset partway is asked for again from where it stopped, and the bytes are whole', async () => {
  const store = storeThroughProxy();
  try {
    const rule = proxy.add({ method: 'GET', path: ref.name, range: true, action: { kind: 'reset', afterBytes: 1536 * 1024 }, times: 1 });
    const body = await store.read(ref, 0, 4 * MiB);
    const { buf } = await pullAll(body.direct as DirectRead, 4 * MiB, MiB);
    expect(rule.hits).toBe(1);
    expect(buf.equals(content.subarray(0, 4 * MiB))).toBe(true);
    const gets = proxy.seen({ method: 'GET', path: ref.name }).slice(-2);
    expect(gets.map((r) => r.range)).toEqual(['bytes=0-4194303', expect.stringMatching(/^bytes=\d+-4194303$/)]);
    expect(gets[1]?.range).not.toBe('bytes=0-4194303');
  } finally {
    await store.close();
  }
});

test('Azure\'s refusals are BlobdiskErrors: a changed blob is stale, a missing one not-found', async () => {
  const store = storeThroughProxy();
  try {
    await expect(store.read(ref, 0, 4096, { etag: '"0x8D000000000000"' })).rejects.toMatchObject({ kind: 'stale' });
    await expect(store.read({ container: ref.container, name: 'missing.img' }, 0, 4096)).rejects.toMatchObject({ kind: 'not-found' });
    // The connection of a refusal is not kept in a bad state: the next read is right.
    const { buf } = await pullAll((await store.read(ref, 4096, 8192)).direct as DirectRead, 8192, 8192);
    expect(buf.equals(content.subarray(4096, 4096 + 8192))).toBe(true);
  } finally {
    await store.close();
  }
});

test('a body that stops arriving fails as unavailable at the deadline, not never', async () => {
  const store = storeThroughProxy(3000);
  try {
    proxy.add({ method: 'GET', path: ref.name, range: true, action: { kind: 'hang', midBody: true, afterBytes: 256 * 1024 }, times: 1 });
    const t0 = Date.now();
    const body = await store.read(ref, 0, 2 * MiB);
    const error = await pullAll(body.direct as DirectRead, 2 * MiB, 2 * MiB).then(
      () => undefined,
      (e: unknown) => e,
    );
    const ms = Date.now() - t0;
    expect(isBlobdiskError(error) && error.kind).toBe('unavailable');
    expect(ms).toBeGreaterThanOrEqual(2500);
    expect(ms).toBeLessThan(10_000);
  } finally {
    proxy.releaseHangs();
    await store.close();
  }
});

test('a body left unread closes its connection, and the next read is right', async () => {
  const store = storeThroughProxy();
  try {
    const body = await store.read(ref, 0, 4 * MiB);
    const direct = body.direct as DirectRead;
    const buf = Buffer.alloc(MiB);
    expect(await direct.pull(buf, 0, MiB)).toBe(MiB);
    direct.cancel();
    const next = await pullAll((await store.read(ref, 5 * MiB, MiB)).direct as DirectRead, MiB, MiB);
    expect(next.buf.equals(content.subarray(5 * MiB, 6 * MiB))).toBe(true);
  } finally {
    await store.close();
  }
});

test('a progress listener that throws fails the read, not the process', async () => {
  const store = storeThroughProxy();
  try {
    const body = await store.read(ref, 0, MiB);
    const buf = Buffer.alloc(MiB);
    const listener = (): void => {
      throw new Error('the listener failed');
    };
    await expect((body.direct as DirectRead).pull(buf, 0, MiB, listener)).rejects.toMatchObject({ kind: 'unavailable' });
    // The store goes on serving reads.
    const next = await pullAll((await store.read(ref, MiB, MiB)).direct as DirectRead, MiB, MiB);
    expect(next.buf.equals(content.subarray(MiB, 2 * MiB))).toBe(true);
  } finally {
    await store.close();
  }
});
