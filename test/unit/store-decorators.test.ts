/* Store decorators over the in-memory store: FaultyStore injects faults per operation and
 * per blob; MeteredStore counts requests and bytes. */

import { BlobdiskError, isBlobdiskError } from '../../lib/errors';
import { FaultyStore } from '../../lib/store/faulty';
import { MeteredStore, type RequestEnd } from '../../lib/store/metered';
import { ManualClock } from '../support/manual-clock';
import type { BlobRef, BlobStore } from '../../lib/store/types';
import { MemoryStore } from '../support/memory-store';

const a: BlobRef = { container: 'c', name: 'a.img' };
const b: BlobRef = { container: 'c', name: 'b.img' };
const down = new BlobdiskError('unavailable', 'injected');

async function kindOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (e) {
    return isBlobdiskError(e) ? e.kind : 'not a BlobdiskError';
  }
}

async function readAll(store: BlobStore, ref: BlobRef, length: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const part of await store.read(ref, 0, length)) parts.push(part);
  return Buffer.concat(parts);
}

async function setup(): Promise<{ memory: MemoryStore; faulty: FaultyStore }> {
  const memory = new MemoryStore({ containers: ['c'], chunkSize: 1024 });
  for (const ref of [a, b]) {
    await memory.createPageBlob(ref, 4096);
    await memory.putPages(ref, 0, Buffer.alloc(4096, ref === a ? 1 : 2));
  }
  return { memory, faulty: new FaultyStore(memory) };
}

describe('FaultyStore', () => {
  test('fails the matching calls only: by operation, by blob, after `skip`, `times` of them', async () => {
    const { faulty } = await setup();
    const fault = { ops: ['getInfo'], blob: { container: 'c', name: 'a.img' }, skip: 1, times: 2, action: { kind: 'fail', error: down } } as const;
    faulty.inject(fault);
    expect(await kindOf(faulty.getInfo(b))).toBe('ok'); // another blob
    expect(await kindOf(faulty.pageRanges(a, 0, 4096))).toBe('ok'); // another operation
    expect(await kindOf(faulty.getInfo(a))).toBe('ok'); // skipped
    expect(await kindOf(faulty.getInfo(a))).toBe('unavailable');
    expect(await kindOf(faulty.getInfo(a))).toBe('unavailable');
    expect(await kindOf(faulty.getInfo(a))).toBe('ok'); // used up
    expect(faulty.hitsOf(fault)).toBe(2);
  });

  test('a fault for ever lasts until it is removed', async () => {
    const { faulty } = await setup();
    const remove = faulty.inject({ ops: ['putPages'], times: Infinity, action: { kind: 'fail', error: down } });
    for (let i = 0; i < 5; i++) expect(await kindOf(faulty.putPages(a, 0, Buffer.alloc(512)))).toBe('unavailable');
    remove();
    expect(await kindOf(faulty.putPages(a, 0, Buffer.alloc(512)))).toBe('ok');
  });

  test('hang holds a call until healed; wait holds it until its signal', async () => {
    const { faulty } = await setup();
    faulty.inject({ ops: ['getInfo'], action: { kind: 'hang' } });
    let answered = false;
    const hung = faulty.getInfo(a).then(() => (answered = true));
    await new Promise((r) => setImmediate(r));
    expect(answered).toBe(false);
    faulty.heal();
    await hung;
    expect(answered).toBe(true);

    let open = (): void => undefined;
    const gate = new Promise<void>((r) => (open = r));
    faulty.inject({ ops: ['getInfo'], action: { kind: 'wait', until: () => gate } });
    let passed = false;
    const waiting = faulty.getInfo(a).then(() => (passed = true));
    await new Promise((r) => setImmediate(r));
    expect(passed).toBe(false);
    open();
    await waiting;
    expect(passed).toBe(true);
  });

  test('delay answers late', async () => {
    const { faulty } = await setup();
    faulty.inject({ ops: ['getInfo'], action: { kind: 'delay', ms: 50 } });
    const t0 = Date.now();
    await faulty.getInfo(a);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(45);
  });

  test('short ends a body early; reset fails it after some bytes', async () => {
    const { faulty } = await setup();
    faulty.inject({ ops: ['read'], action: { kind: 'short', bytes: 1500 } });
    const short = await readAll(faulty, a, 4096);
    expect(short).toEqual(Buffer.alloc(1500, 1));
    faulty.inject({ ops: ['read'], action: { kind: 'reset', bytes: 2048 } });
    const got: Buffer[] = [];
    await expect(
      (async () => {
        for await (const part of await faulty.read(a, 0, 4096)) got.push(part);
      })(),
    ).rejects.toMatchObject({ kind: 'unavailable' });
    expect(Buffer.concat(got)).toEqual(Buffer.alloc(2048, 1));
    expect(await readAll(faulty, a, 4096)).toEqual(Buffer.alloc(4096, 1)); // used up
  });
});

describe('MeteredStore', () => {
  test('counts requests by operation, bytes down as they arrive and bytes up as they leave', async () => {
    const { memory } = await setup();
    const metered = new MeteredStore(memory);
    await metered.putPages(a, 0, Buffer.alloc(1024));
    await readAll(metered, b, 4096);
    await metered.getInfo(a);
    await metered.getInfo(b);
    expect(metered.counters).toEqual({ requests: 4, bytesDown: 4096, bytesUp: 1024 });
    expect(Object.fromEntries(metered.byOp)).toEqual({ putPages: 1, read: 1, getInfo: 2 });
  });
});

describe('MeteredStore, as the metrics see it', () => {
  test('reports each request as it ends, with its outcome, and knows since when Azure has not answered', async () => {
    const { memory } = await setup();
    const clock = new ManualClock();
    const start = clock.now();
    const ends: RequestEnd[] = [];
    const faulty = new FaultyStore(memory, clock);
    const metered = new MeteredStore(faulty, (r) => ends.push(r), clock);
    await metered.getInfo(a);
    expect(ends).toEqual([{ op: 'getInfo', seconds: expect.any(Number) as unknown, outcome: 'ok' }]);
    expect(metered.unreachableSince).toBeNull();

    // No answer at all (the error carries no HTTP status): unreachable from the first failure on.
    faulty.inject({ ops: ['getInfo'], times: 2, action: { kind: 'fail', error: new BlobdiskError('unavailable', 'getInfo failed: Azure is unreachable') } });
    await expect(metered.getInfo(a)).rejects.toMatchObject({ kind: 'unavailable' });
    await clock.advance(5_000);
    await expect(metered.getInfo(a)).rejects.toMatchObject({ kind: 'unavailable' });
    expect(metered.unreachableSince).toBe(start);
    expect(ends.slice(1).map((r) => r.outcome)).toEqual(['unavailable', 'unavailable']);

    // A failure that is not about reaching Azure is not counted as unreachable; an answer ends it.
    await expect(metered.getInfo({ container: 'c', name: 'nothing-here' })).rejects.toMatchObject({ kind: 'not-found' });
    expect(metered.unreachableSince).toBe(start);
    await metered.getInfo(a);
    expect(metered.unreachableSince).toBeNull();
  });
});
