import { Metrics, MetricsServer, parseListenAddress, type MetricsSnapshot } from '../../lib/prometheus';
import { silentLogger } from '../../lib/log';
import { newImageCounters } from '../../lib/metrics';

function snapshot(over: Partial<MetricsSnapshot> = {}): MetricsSnapshot {
  return {
    totals: { ...newImageCounters(), hits: 7, misses: 3, bytesDown: 4096, bytesUp: 512 },
    cacheUsedBytes: 1 << 20,
    cacheSizeBytes: 1 << 30,
    dirtyBytes: 512,
    oldestDirtySeconds: 4,
    images: [
      { path: 'vms/a.img', dirtyBytes: 512, lease: 'held', conflict: null },
      { path: 'vms/b.img', dirtyBytes: 0, lease: 'none', conflict: 'changed in Azure' },
    ],
    azureUnreachableSeconds: null,
    ...over,
  };
}

describe('Prometheus metrics', () => {
  it('reads the mount at scrape time and counts each Azure request as it ends', async () => {
    let reads = 0;
    const m = new Metrics(async () => {
      reads++;
      return snapshot();
    });
    m.observe({ op: 'read', seconds: 0.02, outcome: 'ok' });
    m.observe({ op: 'putPages', seconds: 0.3, outcome: 'stale', code: '412 ConditionNotMet' });
    const text = await m.text();
    expect(reads).toBe(1); // one snapshot serves every gauge of a scrape
    for (const line of [
      'blobdisk_cache_hits_total 7',
      'blobdisk_cache_misses_total 3',
      'blobdisk_down_bytes_total 4096',
      'blobdisk_up_bytes_total 512',
      'blobdisk_dirty_bytes 512',
      'blobdisk_oldest_dirty_seconds 4',
      'blobdisk_cache_used_bytes 1048576',
      'blobdisk_azure_reachable 1',
      'blobdisk_conflicts 1',
      'blobdisk_image_dirty_bytes{image="vms/a.img"} 512',
      'blobdisk_leases{state="held"} 1',
      'blobdisk_leases{state="lost"} 0',
      'blobdisk_azure_requests_total{op="read",outcome="ok"} 1',
      'blobdisk_azure_requests_total{op="putPages",outcome="stale"} 1',
      'blobdisk_azure_errors_total{op="putPages",code="412 ConditionNotMet"} 1',
      'blobdisk_azure_request_duration_seconds_bucket{le="0.025",op="read"} 1',
      'blobdisk_azure_request_duration_seconds_count{op="putPages"} 1',
    ]) {
      expect(text.split('\n')).toContain(line);
    }
    // Totals follow the mount on the next scrape instead of adding up.
    expect((await m.text()).split('\n')).toContain('blobdisk_cache_hits_total 7');
  });

  it('says Azure is unreachable, and since when', async () => {
    const text = await new Metrics(async () => snapshot({ azureUnreachableSeconds: 42 })).text();
    expect(text.split('\n')).toEqual(expect.arrayContaining(['blobdisk_azure_reachable 0', 'blobdisk_azure_unreachable_seconds 42']));
  });

  it('serves /metrics over HTTP', async () => {
    const server = await MetricsServer.listen({ host: '127.0.0.1', port: 0 }, new Metrics(async () => snapshot()), silentLogger);
    try {
      expect(server.url).toMatch(/^http:\/\/127\.0\.0\.1:[1-9]\d*\/metrics$/);
      const ok = await fetch(server.url);
      expect(ok.status).toBe(200);
      expect(ok.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
      expect((await ok.text()).split('\n')).toContain('blobdisk_cache_hits_total 7');
      expect((await fetch(server.url.replace('/metrics', '/'))).status).toBe(404);
    } finally {
      await server.close();
    }
  });

  it.each([
    ['127.0.0.1:9464', { host: '127.0.0.1', port: 9464 }],
    [':9464', { host: '127.0.0.1', port: 9464 }],
    ['[::1]:9464', { host: '::1', port: 9464 }],
    ['0.0.0.0:80', { host: '0.0.0.0', port: 80 }],
  ])('takes %p as a listen address', (text, address) => {
    expect(parseListenAddress(text)).toEqual(address);
  });

  it.each(['9464', 'localhost', '127.0.0.1:99999', 'a:b'])('refuses %p with one line', (text) => {
    expect(() => parseListenAddress(text)).toThrow(`--metrics-addr ${JSON.stringify(text)} is not HOST:PORT; give e.g. 127.0.0.1:9464`);
  });
});
