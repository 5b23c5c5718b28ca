/* The Azure store honours Retry-After on 503 ServerBusy (and 500): the retry comes no
 * sooner than Azure asked, and never later than the call's deadline (--io-timeout). Through
 * the fault proxy in front of a real Azurite. Before: the SDK retried 4 to 260 ms later. */

import { AzureStore } from '../../lib/store/azure';
import { retryAfterMs } from '../../lib/store/azure/retry-after';
import { FaultProxy } from '../support/fault-proxy';
import { startTestAzurite, type TestAzurite } from '../support/azurite';

const ref = { container: 'busy', name: 'disk.img' };
let az: TestAzurite;
let proxy: FaultProxy;

function storeThroughProxy(deadlineMs: number): AzureStore {
  return new AzureStore({
    credentials: { kind: 'connectionString', connectionString: proxy.connectionString(az.azurite.connectionString) },
    maxTries: 3,
    tryTimeoutMs: 30_000,
    deadlineMs,
  });
}

beforeAll(async () => {
  az = await startTestAzurite();
  proxy = await FaultProxy.start({ port: az.azurite.port });
  await az.store.createContainer(ref.container);
  await az.store.createPageBlob(ref, 4096);
});

afterEach(() => proxy.remove());

afterAll(async () => {
  await proxy?.close();
  await az?.stop();
});

test('Retry-After: delta-seconds and HTTP dates, capped; nothing for garbage', () => {
  expect(retryAfterMs('2')).toBe(2000);
  expect(retryAfterMs(' 0.5 ')).toBe(500);
  expect(retryAfterMs(new Date(10_000 + 3000).toUTCString(), 10_000)).toBe(3000);
  expect(retryAfterMs('3600')).toBe(60_000);
  expect(retryAfterMs(undefined)).toBeUndefined();
  expect(retryAfterMs('soon')).toBeUndefined();
});

test('a 503 ServerBusy asking for 2 s is retried no sooner than 2 s later, and the call succeeds', async () => {
  const store = storeThroughProxy(20_000);
  try {
    const rule = proxy.add({ method: 'HEAD', path: ref.name, action: { kind: 'busy', retryAfterSeconds: 2 }, times: 1 });
    const t0 = Date.now();
    const info = await store.getInfo(ref);
    const ms = Date.now() - t0;
    expect(info.size).toBe(4096);
    expect(rule.hits).toBe(1);
    const tries = proxy.seen({ method: 'HEAD', path: ref.name }).slice(-2);
    expect(tries.map((t) => t.status)).toEqual([503, 200]);
    const gap = (tries[1]?.at ?? 0) - (tries[0]?.at ?? 0);
    console.log(`retry after a 503 with Retry-After: 2 came ${gap} ms later (call ${ms} ms)`);
    expect(gap).toBeGreaterThanOrEqual(1900);
    expect(ms).toBeLessThan(10_000);
  } finally {
    await store.close();
  }
});

test('a Retry-After longer than the deadline: the call fails (unavailable) at the deadline, not after it', async () => {
  const store = storeThroughProxy(3_000);
  try {
    const rule = proxy.add({ method: 'HEAD', path: ref.name, action: { kind: 'busy', retryAfterSeconds: 30 } });
    const t0 = Date.now();
    await expect(store.getInfo(ref)).rejects.toMatchObject({ kind: 'unavailable' });
    const ms = Date.now() - t0;
    console.log(`with Retry-After: 30 and a 3 s deadline the call failed after ${ms} ms, ${rule.hits} request(s)`);
    expect(ms).toBeGreaterThanOrEqual(2_500);
    expect(ms).toBeLessThan(8_000);
    expect(rule.hits).toBe(1);
  } finally {
    await store.close();
  }
});
