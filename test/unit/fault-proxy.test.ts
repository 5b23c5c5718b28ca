/* The fault proxy of the e2e tests (test/support/fault-proxy.ts) against a tiny upstream
 * HTTP server on loopback: rules match by method, path, query and range with skip and
 * times, and each fault reaches the client the way the network would deliver it. */

import { until } from '../support/manual-clock';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { FaultProxy } from '../support/fault-proxy';

const BODY = Buffer.alloc(256 * 1024, 7);
let upstream: http.Server;
let proxy: FaultProxy;
let upstreamHits = 0;

interface Got { status?: number; headers?: http.IncomingHttpHeaders; body: Buffer; error?: string; ms: number }

function get(path: string, opts: { method?: string; headers?: http.OutgoingHttpHeaders; timeoutMs?: number } = {}): Promise<Got> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let status: number | undefined;
    let headers: http.IncomingHttpHeaders | undefined;
    const req = http.request({ host: '127.0.0.1', port: proxy.port, path, method: opts.method ?? 'GET', headers: opts.headers ?? {}, agent: false }, (res) => {
      status = res.statusCode ?? 0;
      headers = res.headers;
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks), ms: Date.now() - t0 }));
      res.on('error', (e) => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks), error: (e as NodeJS.ErrnoException).code ?? e.message, ms: Date.now() - t0 }));
      res.on('aborted', () => undefined);
    });
    req.setTimeout(opts.timeoutMs ?? 10_000, () => req.destroy(new Error('client timeout')));
    req.on('error', (e) => resolve({ ...(status !== undefined ? { status } : {}), ...(headers !== undefined ? { headers } : {}), body: Buffer.concat(chunks), error: (e as NodeJS.ErrnoException).code ?? e.message, ms: Date.now() - t0 }));
    req.end();
  });
}

beforeAll(async () => {
  upstream = http.createServer((req, res) => {
    upstreamHits++;
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-length': BODY.length, 'x-upstream': '1' });
      res.end(BODY);
    });
  });
  await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
  proxy = await FaultProxy.start({ port: (upstream.address() as AddressInfo).port });
});

afterEach(() => {
  proxy.remove();
  proxy.releaseHangs();
});

afterAll(async () => {
  await proxy.close();
  await new Promise<void>((r) => upstream.close(() => r()));
});

test('passes requests through and rewrites a connection string to itself', async () => {
  const got = await get('/devstoreaccount1/c/a.img');
  expect({ status: got.status, ok: got.body.equals(BODY), x: got.headers?.['x-upstream'] }).toEqual({ status: 200, ok: true, x: '1' });
  const cs = 'DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=k;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;';
  expect(proxy.connectionString(cs)).toBe(`DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=k;BlobEndpoint=http://127.0.0.1:${proxy.port}/devstoreaccount1;`);
});

test('503 ServerBusy and 500 carry Azure error codes and never reach the upstream; skip and times count', async () => {
  const before = upstreamHits;
  const rule = proxy.add({ method: 'PUT', path: 'a.img', query: 'comp=page', skip: 1, times: 2, action: { kind: 'busy', retryAfterSeconds: 3 } });
  proxy.add({ method: 'GET', path: 'b.img', range: 'bytes=0-', times: 1, action: { kind: 'error500' } });
  const statuses: (number | undefined)[] = [];
  for (let i = 0; i < 4; i++) statuses.push((await get('/acct/c/a.img?comp=page', { method: 'PUT' })).status);
  expect(statuses).toEqual([200, 503, 503, 200]);
  expect({ seen: rule.seen, hits: rule.hits }).toEqual({ seen: 3, hits: 2 });
  const busy = await get('/acct/c/a.img?comp=page&x=1', { method: 'PUT' });
  expect(busy.status).toBe(200);
  proxy.add({ method: 'PUT', query: 'comp=page', action: { kind: 'busy', retryAfterSeconds: 3 } });
  const b = await get('/acct/c/a.img?comp=page', { method: 'PUT' });
  expect({ status: b.status, code: b.headers?.['x-ms-error-code'], after: b.headers?.['retry-after'], xml: b.body.toString().includes('<Code>ServerBusy</Code>') })
    .toEqual({ status: 503, code: 'ServerBusy', after: '3', xml: true });
  // The range rule: no range header, no match; with it, one 500.
  expect((await get('/acct/c/b.img')).status).toBe(200);
  const e = await get('/acct/c/b.img', { headers: { 'x-ms-range': 'bytes=0-1023' } });
  expect({ status: e.status, code: e.headers?.['x-ms-error-code'] }).toEqual({ status: 500, code: 'InternalError' });
  expect((await get('/acct/c/b.img', { headers: { 'x-ms-range': 'bytes=0-1023' } })).status).toBe(200);
  expect(upstreamHits - before).toBe(2 + 1 + 1 + 1);
});

test('truncate sends the full Content-Length but fewer bytes; reset cuts mid-body', async () => {
  proxy.add({ path: 't.img', times: 1, action: { kind: 'truncate', keepBytes: 1000 } });
  const t = await get('/acct/c/t.img');
  expect(t.headers?.['content-length']).toBe(String(BODY.length));
  expect(t.body.length).toBe(1000);
  expect(t.error).toBeDefined();
  proxy.add({ path: 'r.img', times: 1, action: { kind: 'reset', afterBytes: 4096 } });
  const r = await get('/acct/c/r.img');
  expect(r.status).toBe(200);
  expect(r.body.length).toBeLessThan(BODY.length);
  expect(r.error).toBeDefined();
  // Only once each: the next request passes whole.
  expect((await get('/acct/c/r.img')).body.equals(BODY)).toBe(true);
});

test('delay holds a request; hang never answers (also mid-body) until released', async () => {
  proxy.add({ path: 'd.img', times: 1, action: { kind: 'delay', ms: 600 } });
  const d = await get('/acct/c/d.img');
  expect({ ok: d.body.equals(BODY), slow: d.ms >= 550 }).toEqual({ ok: true, slow: true });
  proxy.add({ path: 'h.img', times: 1, action: { kind: 'hang' } });
  const h = await get('/acct/c/h.img', { timeoutMs: 700 });
  expect({ status: h.status, error: h.error }).toEqual({ status: undefined, error: 'client timeout' });
  proxy.add({ path: 'm.img', times: 1, action: { kind: 'hang', midBody: true, afterBytes: 2048 } });
  const pending = get('/acct/c/m.img', { timeoutMs: 30_000 });
  // Released once the proxy holds it, part of its body sent.
  await until(() => proxy.seen({ path: 'm.img' }).length > 0);
  proxy.releaseHangs();
  const m = await pending;
  expect({ status: m.status, length: m.body.length, failed: m.error !== undefined }).toEqual({ status: 200, length: 2048, failed: true });
  expect(proxy.seen({ path: 'm.img' }).map((x) => x.fault)).toEqual(['hang']);
});
