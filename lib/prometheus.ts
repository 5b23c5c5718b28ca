/* `--metrics-addr`: the mount's metrics in the Prometheus text format, with prom-client.
 * Two kinds of source: every Azure request is observed as it ends (count by operation and
 * outcome, errors by status and service code, a latency histogram), and everything else
 * (cache hits and misses, bytes, dirty data, cache use, leases, Azure reachability) is read
 * from the mount's status when Prometheus scrapes, so nothing is counted twice. */

import http from 'node:http';
import type * as PromClient from 'prom-client';
import { UsageError } from './errors';
import type { Logger } from './log';
import type { ImageCounters } from './metrics';

/** What the metrics read from the mount at each scrape. */
export interface MetricsSnapshot {
  readonly totals: ImageCounters;
  readonly cacheUsedBytes: number;
  readonly cacheSizeBytes: number;
  readonly dirtyBytes: number;
  readonly oldestDirtySeconds: number | null;
  readonly images: readonly { readonly path: string; readonly dirtyBytes: number; readonly lease: string; readonly conflict: string | null }[];
  /** Seconds since Azure last answered nothing (a network failure or timeout); null while it answers. */
  readonly azureUnreachableSeconds: number | null;
}

/** One Azure request, as it ended. */
export interface RequestOutcome {
  readonly op: string;
  readonly seconds: number;
  /** 'ok', or the error's kind (not-found, busy, unavailable, ...). */
  readonly outcome: string;
  /** HTTP status and service error code of a failure, e.g. "412 ConditionNotMet". */
  readonly code?: string;
}

/** Latency buckets from a cached-metadata answer (ms) to a slow 8 MiB transfer (s). */
const LATENCY_BUCKETS = [0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export class Metrics {
  readonly registry: PromClient.Registry;
  private readonly requests: PromClient.Counter<'op' | 'outcome'>;
  private readonly errors: PromClient.Counter<'op' | 'code'>;
  private readonly latency: PromClient.Histogram<'op'>;

  constructor(snapshot: () => Promise<MetricsSnapshot>) {
    // Loaded only here: a mount without --metrics-addr never needs it.
    const client = require('prom-client') as typeof PromClient;
    this.registry = new client.Registry();
    const registers = [this.registry];
    this.requests = new client.Counter({ name: 'blobdisk_azure_requests_total', help: 'Azure Storage requests by operation and outcome (ok or the error kind)', labelNames: ['op', 'outcome'], registers });
    this.errors = new client.Counter({ name: 'blobdisk_azure_errors_total', help: 'Failed Azure Storage requests by operation and HTTP status / service error code', labelNames: ['op', 'code'], registers });
    this.latency = new client.Histogram({ name: 'blobdisk_azure_request_duration_seconds', help: 'Azure Storage request latency, retries included', labelNames: ['op'], buckets: LATENCY_BUCKETS, registers });

    // Read at scrape time: one status snapshot serves every gauge of that scrape.
    let pending: Promise<MetricsSnapshot> | undefined;
    const current = (): Promise<MetricsSnapshot> => {
      pending ??= snapshot().finally(() => setImmediate(() => (pending = undefined)));
      return pending;
    };
    const total = (name: string, help: string, read: (s: MetricsSnapshot) => number): void => {
      new client.Counter({
        name,
        help,
        registers,
        async collect() {
          this.reset();
          this.inc(read(await current()));
        },
      });
    };
    const gauge = (name: string, help: string, read: (s: MetricsSnapshot) => number): void => {
      new client.Gauge({
        name,
        help,
        registers,
        async collect() {
          this.set(read(await current()));
        },
      });
    };
    total('blobdisk_cache_hits_total', 'Grain reads served from the local cache', (s) => s.totals.hits);
    total('blobdisk_cache_misses_total', 'Grain reads that waited for a fetch from Azure', (s) => s.totals.misses);
    total('blobdisk_zero_reads_total', 'Grain reads answered with zeros without a request (empty page ranges)', (s) => s.totals.zeroReads);
    total('blobdisk_read_bytes_total', 'Bytes returned to readers', (s) => s.totals.bytesRead);
    total('blobdisk_down_bytes_total', 'Bytes fetched from Azure', (s) => s.totals.bytesDown);
    total('blobdisk_up_bytes_total', 'Bytes uploaded to Azure (Put Page, Put Block)', (s) => s.totals.bytesUp);
    total('blobdisk_cleared_bytes_total', 'Bytes cleared in Azure without sending data (Clear Pages)', (s) => s.totals.bytesCleared);
    gauge('blobdisk_dirty_bytes', 'Written bytes not yet uploaded', (s) => s.dirtyBytes);
    gauge('blobdisk_oldest_dirty_seconds', 'Age of the oldest data not yet uploaded (0 when none)', (s) => s.oldestDirtySeconds ?? 0);
    gauge('blobdisk_cache_used_bytes', 'Bytes the cache directory holds', (s) => s.cacheUsedBytes);
    gauge('blobdisk_cache_size_bytes', 'The cache bound (--cache-size)', (s) => s.cacheSizeBytes);
    gauge('blobdisk_azure_reachable', '1 while Azure answers, 0 since it stopped answering', (s) => (s.azureUnreachableSeconds === null ? 1 : 0));
    gauge('blobdisk_azure_unreachable_seconds', 'How long Azure has not answered (0 while it answers)', (s) => s.azureUnreachableSeconds ?? 0);
    gauge('blobdisk_conflicts', 'Images whose blob changed in Azure while they held data not yet uploaded', (s) => s.images.filter((i) => i.conflict !== null).length);
    new client.Gauge({
      name: 'blobdisk_image_dirty_bytes',
      help: 'Written bytes not yet uploaded, per open image',
      labelNames: ['image'],
      registers,
      async collect() {
        this.reset();
        for (const i of (await current()).images) this.set({ image: i.path }, i.dirtyBytes);
      },
    });
    new client.Gauge({
      name: 'blobdisk_leases',
      help: 'Open images by the state of their Azure lease (held, none, lost)',
      labelNames: ['state'],
      registers,
      async collect() {
        this.reset();
        const counts = new Map<string, number>([['held', 0], ['none', 0], ['lost', 0]]);
        for (const i of (await current()).images) counts.set(i.lease, (counts.get(i.lease) ?? 0) + 1);
        for (const [state, n] of counts) this.set({ state }, n);
      },
    });
  }

  /** Records one Azure request as it ended. */
  observe(r: RequestOutcome): void {
    this.requests.inc({ op: r.op, outcome: r.outcome });
    this.latency.observe({ op: r.op }, r.seconds);
    if (r.outcome !== 'ok') this.errors.inc({ op: r.op, code: r.code ?? r.outcome });
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }
}

/** `host:port` or `:port` (127.0.0.1) → where to listen; a UsageError says how to write it. */
export function parseListenAddress(text: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:]+)\]|([^:]*)):(\d{1,5})$/.exec(text.trim());
  const port = Number(m?.[3]);
  if (m === null || !(port >= 1 && port <= 65535)) {
    throw new UsageError(`--metrics-addr ${JSON.stringify(text)} is not HOST:PORT; give e.g. 127.0.0.1:9464 (Prometheus' convention for exporters)`);
  }
  return { host: m[1] ?? (m[2] || '127.0.0.1'), port };
}

/** Serves GET /metrics at `address` until close(). */
export class MetricsServer {
  private constructor(
    private readonly server: http.Server,
    readonly url: string,
  ) {}

  static async listen(address: { host: string; port: number }, metrics: Metrics, log: Logger): Promise<MetricsServer> {
    const server = http.createServer((req, res) => {
      if (req.method !== 'GET' || (req.url ?? '/').split('?')[0] !== '/metrics') {
        res.writeHead(404, { 'content-type': 'text/plain' });
        res.end('blobdisk serves its metrics at /metrics\n');
        return;
      }
      metrics.text().then(
        (text) => {
          res.writeHead(200, { 'content-type': metrics.registry.contentType });
          res.end(text);
        },
        (e: unknown) => {
          log.warn(`metrics scrape failed: ${e instanceof Error ? e.message : String(e)}`);
          res.writeHead(500, { 'content-type': 'text/plain' });
          res.end('metrics unavailable\n');
        },
      );
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e: NodeJS.ErrnoException) =>
        reject(new UsageError(`cannot serve metrics at ${address.host}:${address.port} (${e.code ?? e.message}); pick a free port for --metrics-addr`)),
      );
      server.listen(address.port, address.host, () => resolve());
    });
    const host = address.host.includes(':') ? `[${address.host}]` : address.host;
    const bound = server.address();
    const port = bound !== null && typeof bound === 'object' ? bound.port : address.port;
    return new MetricsServer(server, `http://${host}:${port}/metrics`);
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.closeAllConnections();
      this.server.close(() => resolve());
    });
  }
}
