/* A fault-injecting HTTP/1.1 proxy for tests, between the Azure SDK (a mount in a child
 * process) and Azurite, listening on 127.0.0.1 only. It runs in the test process, so a test
 * changes its rules while a mount talks through it. Each request is matched against the
 * rules in the order they were added (method, a substring of the path such as a blob name,
 * a substring of the query such as `comp=page`, a substring of the range header, with
 * `skip` and `times` counts); the first rule that matches and still has uses decides what
 * happens to it. Without a matching rule the request passes through unchanged.
 *
 * Faults, as Azure and the network produce them:
 *   delay      wait before forwarding the request
 *   hang       accept the request and never answer (`midBody`: forward the status, the
 *              headers and part of the body, then stop sending)
 *   reset      forward the status, the headers and part of the body, then reset the
 *              connection (TCP RST); for a response without a body the request reached
 *              Azurite and did its work before the reset
 *   busy       503 ServerBusy with Retry-After, Azure's XML error body and x-ms-error-code
 *              (the request never reaches Azurite)
 *   error500   500 InternalError, likewise
 *   truncate   forward the status and headers with the full Content-Length but only part
 *              of the body, then close the connection
 * Hung connections stay open until releaseHangs() or close(). */

import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Socket } from 'node:net';

export type FaultAction =
  | { readonly kind: 'pass' }
  | { readonly kind: 'delay'; readonly ms: number }
  | { readonly kind: 'hang'; readonly midBody?: boolean; readonly afterBytes?: number }
  | { readonly kind: 'reset'; readonly afterBytes?: number }
  | { readonly kind: 'busy'; readonly retryAfterSeconds?: number }
  | { readonly kind: 'error500' }
  | { readonly kind: 'truncate'; readonly keepBytes?: number };

export interface FaultMatch {
  /** HTTP method, e.g. 'GET' or 'PUT' (case-insensitive). */
  readonly method?: string;
  /** Substring of the URL path (decoded), e.g. a blob name. */
  readonly path?: string;
  /** Substring of the query string, e.g. 'comp=page'; `null` means: the request has no `comp=`. */
  readonly query?: string | null;
  /** Substring of the `x-ms-range` or `range` header; `true`: the request has one. */
  readonly range?: string | true;
}

export interface FaultRule extends FaultMatch {
  readonly action: FaultAction;
  /** How many matching requests the rule acts on; default: every one. */
  readonly times?: number;
  /** Matching requests let through untouched before the rule starts acting; default 0. */
  readonly skip?: number;
}

export interface ActiveRule {
  readonly rule: FaultRule;
  /** Matching requests seen (skipped ones included). */
  readonly seen: number;
  /** Requests the rule acted on. */
  readonly hits: number;
}

export interface RequestRecord {
  readonly method: string;
  readonly path: string;
  readonly query: string;
  readonly range: string | undefined;
  /** What was done to it ('pass' when no rule acted). */
  readonly fault: FaultAction['kind'];
  /** Response status sent to the client, if any. */
  status?: number;
  readonly at: number;
}

interface RuleState {
  readonly rule: FaultRule;
  seen: number;
  hits: number;
}

/** An XML error body as Azure sends it. */
function azureErrorBody(code: string, message: string): string {
  return `<?xml version="1.0" encoding="utf-8"?><Error><Code>${code}</Code><Message>${message}\nRequestId:00000000-0000-0000-0000-000000000000\nTime:${new Date().toISOString()}</Message></Error>`;
}

function matches(m: FaultMatch, req: { method: string; path: string; query: string; range: string | undefined }): boolean {
  if (m.method !== undefined && m.method.toUpperCase() !== req.method) return false;
  if (m.path !== undefined && !req.path.includes(m.path)) return false;
  if (m.query === null && /(^|&)comp=/.test(req.query)) return false;
  if (typeof m.query === 'string' && !req.query.includes(m.query)) return false;
  if (m.range === true && req.range === undefined) return false;
  if (typeof m.range === 'string' && !(req.range ?? '').includes(m.range)) return false;
  return true;
}

export class FaultProxy {
  private readonly rules: RuleState[] = [];
  private readonly hung = new Set<Socket>();
  private readonly sockets = new Set<Socket>();
  private readonly agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  /** Client connections accepted so far. */
  connections = 0;
  /** Every request seen, oldest first (bounded: the last 10,000). */
  readonly requests: RequestRecord[] = [];

  private constructor(
    private readonly server: http.Server,
    private readonly upstream: { host: string; port: number },
  ) {}

  /** Starts a proxy on 127.0.0.1 (a free port) in front of `upstream` (Azurite's blob port). */
  static async start(upstream: { host?: string; port: number }): Promise<FaultProxy> {
    let proxy: FaultProxy | undefined;
    const server = http.createServer((req, res) => void proxy?.handle(req, res));
    // Requests may legitimately wait long (a hang rule); the SDK bounds its own waits.
    server.requestTimeout = 0;
    server.headersTimeout = 60_000;
    server.keepAliveTimeout = 5_000;
    proxy = new FaultProxy(server, { host: upstream.host ?? '127.0.0.1', port: upstream.port });
    server.on('connection', (s: Socket) => {
      proxy?.sockets.add(s);
      if (proxy) proxy.connections++;
      s.once('close', () => proxy?.sockets.delete(s));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    return proxy;
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  /** `connectionString` (Azurite's) with its BlobEndpoint pointed at this proxy. */
  connectionString(connectionString: string): string {
    return connectionString
      .split(';')
      .map((part) => (part.startsWith('BlobEndpoint=') ? `BlobEndpoint=${this.rewrite(part.slice('BlobEndpoint='.length))}` : part))
      .join(';');
  }

  private rewrite(endpoint: string): string {
    const url = new URL(endpoint);
    url.host = `127.0.0.1:${this.port}`;
    return url.toString().replace(/\/$/, '');
  }

  /** Adds a rule (after the existing ones); returns a live view of its counters. */
  add(rule: FaultRule): ActiveRule {
    const state: RuleState = { rule, seen: 0, hits: 0 };
    this.rules.push(state);
    return state;
  }

  /** Removes one rule, or every rule; requests already hung stay hung (see releaseHangs). */
  remove(rule?: ActiveRule): void {
    if (rule === undefined) this.rules.length = 0;
    else {
      const i = this.rules.indexOf(rule as RuleState);
      if (i >= 0) this.rules.splice(i, 1);
    }
  }

  /** Destroys the client connections of hung requests (the client sees them closed). */
  releaseHangs(): void {
    for (const s of this.hung) s.destroy();
    this.hung.clear();
  }

  /** Requests seen that match `m` (for assertions on what reached the proxy). */
  seen(m: FaultMatch = {}): RequestRecord[] {
    return this.requests.filter((r) => matches(m, r));
  }

  async close(): Promise<void> {
    this.remove();
    for (const s of this.sockets) s.destroy();
    this.agent.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private pick(req: { method: string; path: string; query: string; range: string | undefined }): FaultAction {
    for (const state of this.rules) {
      if (!matches(state.rule, req)) continue;
      const times = state.rule.times ?? Infinity;
      if (state.hits >= times) continue;
      state.seen++;
      if (state.seen <= (state.rule.skip ?? 0)) return { kind: 'pass' };
      state.hits++;
      return state.rule.action;
    }
    return { kind: 'pass' };
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://proxy');
    const rangeHeader = req.headers['x-ms-range'] ?? req.headers.range;
    const info = {
      method: (req.method ?? 'GET').toUpperCase(),
      path: decodeURIComponent(url.pathname),
      query: url.search.replace(/^\?/, ''),
      range: Array.isArray(rangeHeader) ? rangeHeader[0] : rangeHeader,
    };
    const action = this.pick(info);
    const record: RequestRecord = { ...info, fault: action.kind, at: Date.now() };
    this.requests.push(record);
    if (this.requests.length > 10_000) this.requests.splice(0, this.requests.length - 10_000);
    const socket = req.socket;

    switch (action.kind) {
      case 'hang':
        if (action.midBody !== true) {
          // Take the request body in, answer nothing.
          req.resume();
          this.hung.add(socket);
          return;
        }
        break;
      case 'busy':
      case 'error500': {
        req.resume();
        await new Promise((r) => req.once('end', r));
        const busy = action.kind === 'busy';
        const body = busy
          ? azureErrorBody('ServerBusy', 'The server is currently unable to receive requests. Please retry your request.')
          : azureErrorBody('InternalError', 'The server encountered an internal error. Please retry the request.');
        const headers: http.OutgoingHttpHeaders = {
          'content-type': 'application/xml',
          'content-length': Buffer.byteLength(body),
          'x-ms-error-code': busy ? 'ServerBusy' : 'InternalError',
          'x-ms-request-id': '00000000-0000-0000-0000-000000000000',
          'x-ms-version': String(req.headers['x-ms-version'] ?? '2025-01-05'),
        };
        if (busy) headers['retry-after'] = String(action.retryAfterSeconds ?? 1);
        record.status = busy ? 503 : 500;
        res.writeHead(record.status, busy ? 'Server Busy' : 'Internal Server Error', headers);
        res.end(body);
        return;
      }
      case 'delay':
        await new Promise((r) => setTimeout(r, action.ms));
        break;
      default:
        break;
    }
    this.forward(req, res, action, record);
  }

  /** Sends the request to Azurite and its answer back, applying a body fault. */
  private forward(req: http.IncomingMessage, res: http.ServerResponse, action: FaultAction, record: RequestRecord): void {
    const socket = req.socket;
    const headers = { ...req.headers, host: `${this.upstream.host}:${this.upstream.port}` };
    const up = http.request({ host: this.upstream.host, port: this.upstream.port, method: req.method, path: req.url, headers, agent: this.agent });
    up.on('error', () => socket.destroy());
    req.on('aborted', () => up.destroy());
    req.pipe(up);
    up.on('response', (ur) => {
      record.status = ur.statusCode ?? 0;
      const outHeaders: http.OutgoingHttpHeaders = {};
      for (const [k, v] of Object.entries(ur.headers)) if (v !== undefined && k !== 'connection' && k !== 'keep-alive') outHeaders[k] = v;
      const bodyFault = action.kind === 'reset' || action.kind === 'truncate' || (action.kind === 'hang' && action.midBody === true);
      if (!bodyFault) {
        res.writeHead(ur.statusCode ?? 502, ur.statusMessage, outHeaders);
        ur.pipe(res);
        return;
      }
      const declared = Number(ur.headers['content-length'] ?? NaN);
      const keep = action.kind === 'truncate' ? action.keepBytes : action.kind === 'reset' ? action.afterBytes : action.afterBytes;
      // A body of unknown length is sent chunked by Node; faults then cut the chunked stream.
      if (action.kind === 'truncate' && !(declared > 0)) outHeaders['content-length'] = 64;
      res.writeHead(ur.statusCode ?? 502, ur.statusMessage, outHeaders);
      const limit = keep ?? (declared > 0 ? Math.floor(declared / 2) : 0);
      let sent = 0;
      let cut = false;
      const cutNow = (): void => {
        if (cut) return;
        cut = true;
        ur.destroy();
        if (action.kind === 'reset') socket.resetAndDestroy();
        else if (action.kind === 'truncate') socket.end();
        else this.hung.add(socket);
      };
      // A reset drops what still sits in the send buffer: give the kernel a moment to send
      // the headers and the partial body first.
      let scheduled = false;
      const later = (): void => {
        if (scheduled) return;
        scheduled = true;
        setTimeout(cutNow, action.kind === 'reset' ? 50 : 0);
      };
      ur.on('data', (chunk: Buffer) => {
        if (cut) return;
        const room = limit - sent;
        if (room > 0) {
          const piece = chunk.subarray(0, room);
          sent += piece.length;
          // Flush what is sent before the cut, so the client really receives part of the body.
          socket.cork();
          res.write(piece);
          socket.uncork();
        }
        if (sent >= limit) later();
      });
      ur.on('end', later);
      if (limit === 0) later();
    });
  }
}
