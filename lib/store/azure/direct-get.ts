/* Ranged GETs whose body goes straight from the socket into the caller's buffers.
 *
 * Node's HTTP client copies every 64 KiB of a body into a fresh Buffer, and the SDK hands
 * that on through two more streams before the fetcher copies it once more into a grain.
 * On a cold sequential read that was most of the mount's CPU. Here the socket is read with
 * `onread`: the kernel writes the body into the buffer the caller passes to `pull`, a
 * grain, and nothing is allocated per chunk.
 *
 * It is an HttpClient under the SDK's own pipeline, so signing (Shared Key, SAS, Entra),
 * retries, Retry-After and the lean headers stay the SDK's. It serves only what it can
 * serve well: a GET with x-ms-range, no proxy, no agent or TLS settings of its own; any
 * other request goes to the SDK's client. An answer that is not 2xx is read whole and the
 * connection closed; a 2xx answer's body is pulled (DirectBody) and the connection kept
 * for the next GET once the body is read to its end. */

import net from 'node:net';
import tls from 'node:tls';
import { createDefaultHttpClient, createHttpHeaders, RestError, type HttpClient, type PipelineRequest, type PipelineResponse } from '@azure/core-rest-pipeline';

/** Idle connections kept per origin, and how long: below Azurite's 5 s keep-alive, so a
 *  kept connection is not one the server is closing. */
const MAX_IDLE = 16;
const IDLE_MS = 4000;
/** Bytes of a response's head, and of an error's body, read at most. */
const MAX_HEAD = 64 * 1024;
const MAX_ERROR_BODY = 64 * 1024;
/** What arrives of the body while no pull waits is kept here (the socket is paused then,
 *  so it is one read: the first after each pull), grown when an answer's first read
 *  brought more. */
const SPILL = 16 * 1024;
/** Where bytes go that no phase wants yet (an answer's first bytes, an error's body): read
 *  and taken in the same callback, so one buffer serves every connection. */
const SCRATCH = Buffer.allocUnsafe(64 * 1024);

/** The body of a 2xx answer, pulled into the caller's buffers. */
export class DirectBody {
  /** The connection's request this body answers: once read, the connection serves others. */
  private readonly serial: number;

  constructor(private readonly conn: Connection) {
    this.serial = conn.serial;
  }

  private get mine(): boolean {
    return this.conn.serial === this.serial;
  }

  /** Fills `into[offset, offset + length)` with the next body bytes (fewer only at the end
   *  of the body, or just before a failure that the next pull reports); resolves with the
   *  count. `progress` hears how many have arrived so far, as they do. */
  pull(into: Buffer, offset: number, length: number, progress?: (filled: number) => void): Promise<number> {
    return this.mine ? this.conn.pull(into, offset, length, progress) : Promise.resolve(0);
  }

  /** Closes the connection when the caller leaves the body unread. */
  cancel(): void {
    if (this.mine) this.conn.cancel();
  }
}

/** A body's read into the caller's buffer, under way. */
interface Pull {
  readonly progress: ((filled: number) => void) | undefined;
  readonly into: Buffer;
  readonly end: number;
  fill: number;
  readonly start: number;
  readonly resolve: (n: number) => void;
  readonly reject: (e: Error) => void;
}

interface Head {
  readonly status: number;
  readonly headers: Map<string, string>;
}

/** One HTTP/1.1 connection, reading with onread into whichever buffer its phase wants. */
class Connection {
  readonly socket: net.Socket;
  private phase: 'connecting' | 'head' | 'body' | 'error-body' | 'idle' | 'closed' = 'connecting';
  private head = Buffer.allocUnsafe(4096);
  private headLen = 0;
  /** Which buffer the last allocation handed to the socket. */
  private handed: 'head' | 'pull' | 'spill' | 'scratch' = 'scratch';
  private handedAt = 0;
  private handedPull: Pull | undefined;
  private spill = Buffer.allocUnsafe(SPILL);
  spillLen = 0;
  private spillAt = 0;
  bodyLeft = 0;
  private current: Pull | undefined;
  private keepAlive = true;
  private errorBody: Buffer[] = [];
  private errorBytes = 0;
  private chunkedError = false;
  private answer: { resolve: (h: Head) => void; reject: (e: Error) => void } | undefined;
  private failure: Error | undefined;
  private idleTimer: NodeJS.Timeout | undefined;
  /** Whether any byte of an answer arrived on this connection (a kept one that fails before
   *  that was closed by the server meanwhile, and the GET may go again on a new one). */
  answered = false;
  /** Called once the body was read to its end, with the connection reusable or not. */
  onDone: (conn: Connection, reusable: boolean) => void = () => undefined;
  private detach: (() => void) | undefined;

  constructor(readonly origin: URL) {
    const port = Number(origin.port) || (origin.protocol === 'https:' ? 443 : 80);
    const onread = { buffer: (): Uint8Array => this.alloc(), callback: (n: number): boolean => this.received(n) };
    this.socket =
      origin.protocol === 'https:'
        ? tls.connect({ host: origin.hostname, port, servername: net.isIP(origin.hostname) === 0 ? origin.hostname : undefined, onread } as tls.ConnectionOptions)
        : net.connect({ host: origin.hostname, port, onread });
    this.socket.setNoDelay(true);
    this.socket.on('error', (e: Error) => this.fail(e));
    this.socket.on('close', () => this.fail(Object.assign(new Error('the connection closed'), { code: 'ECONNRESET' })));
    this.socket.on('end', () => {
      if (this.phase === 'error-body') this.finishError();
    });
  }

  get reusable(): boolean {
    return this.phase === 'idle';
  }

  /** Counts the requests sent on this connection. */
  serial = 0;

  /** Sends the request head; resolves with the answer's status and headers. */
  send(request: PipelineRequest, path: string): Promise<Head> {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.serial++;
    this.phase = 'head';
    this.headLen = 0;
    this.answered = false;
    this.keepAlive = true;
    const lines = [`GET ${path} HTTP/1.1`, `Host: ${this.origin.host}`];
    for (const [name, value] of request.headers) if (name.toLowerCase() !== 'host' && name.toLowerCase() !== 'connection') lines.push(`${name}: ${value}`);
    lines.push('Connection: keep-alive', '', '');
    if (this.failure) return Promise.reject(this.failure);
    return new Promise<Head>((resolve, reject) => {
      this.answer = { resolve, reject };
      this.socket.write(lines.join('\r\n'), 'latin1');
      this.socket.resume();
    });
  }

  /** Bounds the request by its signal and timeout until the body is read or left. */
  guard(request: PipelineRequest): void {
    const signal = request.abortSignal;
    const abort = (): void => this.fail(Object.assign(new Error('The operation was aborted.'), { name: 'AbortError' }));
    if (signal?.aborted) return abort();
    signal?.addEventListener('abort', abort);
    this.headTimer = request.timeout > 0 ? setTimeout(() => this.fail(Object.assign(new Error(`no answer in ${request.timeout} ms`), { code: 'ETIMEDOUT' })), request.timeout) : undefined;
    this.detach = () => {
      signal?.removeEventListener('abort', abort);
      this.headersArrived();
      this.detach = undefined;
    };
  }

  private headTimer: NodeJS.Timeout | undefined;

  /** Headers arrived: the request's timeout bounds no more than that (its signal bounds the body too). */
  private headersArrived(): void {
    if (this.headTimer) clearTimeout(this.headTimer);
    this.headTimer = undefined;
  }

  park(onExpire: () => void): void {
    this.phase = 'idle';
    this.detach?.();
    this.idleTimer = setTimeout(onExpire, IDLE_MS);
    this.idleTimer.unref();
    this.socket.unref();
  }

  use(): void {
    this.socket.ref();
  }

  /** The buffer the socket reads into next. Node asks for it right after each read (and
   *  once when the socket is made), so it may be stale by the time bytes land in it: `received`
   *  takes them from where they were handed. */
  private alloc(): Uint8Array {
    const pull = this.current;
    if (this.phase === 'head') {
      if (this.headLen === this.head.length) this.growHead(this.head.length * 2);
      this.handed = 'head';
      return this.head.subarray(this.headLen);
    }
    if (this.phase === 'body' && pull && this.spillLen === 0 && this.bodyLeft > 0) {
      this.handed = 'pull';
      this.handedPull = pull;
      return pull.into.subarray(pull.fill, pull.fill + Math.min(pull.end - pull.fill, this.bodyLeft));
    }
    if (this.phase === 'body' && this.bodyLeft > 0 && this.spillAt + this.spillLen < this.spill.length) {
      this.handed = 'spill';
      this.handedAt = this.spillAt + this.spillLen;
      return this.spill.subarray(this.handedAt, this.handedAt + Math.min(this.spill.length - this.handedAt, this.bodyLeft));
    }
    this.handed = 'scratch';
    return SCRATCH;
  }

  private growHead(size: number): void {
    if (size > MAX_HEAD) return this.fail(new RestError('the answer\'s headers are too long', { code: 'REQUEST_SEND_ERROR' }));
    const bigger = Buffer.allocUnsafe(size);
    this.head.copy(bigger, 0, 0, this.headLen);
    this.head = bigger;
  }

  /** Takes `n` bytes read into the last buffer handed; false pauses the socket. */
  private received(n: number): boolean {
    if (this.handed === 'head' && this.phase === 'head') {
      this.headLen += n;
      this.answered = true;
      this.parseHead();
    } else if (this.handed === 'pull' && this.phase === 'body' && this.handedPull === this.current && this.current) {
      const pull = this.current;
      pull.fill += n;
      this.bodyLeft -= n;
      this.tell(pull);
      if (pull.fill === pull.end || this.bodyLeft === 0) this.finishPull();
    } else {
      const from = this.handed === 'spill' ? this.spill : this.handed === 'head' ? this.head : SCRATCH;
      const at = this.handed === 'spill' ? this.handedAt : this.handed === 'head' ? this.headLen : 0;
      this.consume(from, at, at + n);
    }
    return this.phase === 'head' || this.phase === 'error-body' || (this.phase === 'body' && this.current !== undefined);
  }

  /** Tells the pull's caller how far it is. This runs inside the socket's read callback, where
   *  a throw would bring the process down: a caller's failure fails the connection instead. */
  private tell(pull: Pull): void {
    try {
      pull.progress?.(pull.fill - pull.start);
    } catch (e) {
      this.fail(e instanceof Error ? e : new Error(String(e)));
    }
  }

  /** Bytes [start, end) of `from` that were read before the phase wanted them there. */
  private consume(from: Buffer, start: number, end: number): void {
    const n = end - start;
    switch (this.phase) {
      case 'head':
        if (this.headLen + n > this.head.length) this.growHead(Math.max(this.head.length * 2, this.headLen + n));
        if (this.phase !== 'head') return;
        from.copy(this.head, this.headLen, start, end);
        this.headLen += n;
        this.answered = true;
        this.parseHead();
        return;
      case 'body': {
        if (n > this.bodyLeft) return this.fail(new RestError('Azure sent more than the body', { code: 'ECONNRESET' }));
        this.bodyLeft -= n;
        let used = 0;
        const pull = this.current;
        if (pull) {
          used = Math.min(n, pull.end - pull.fill);
          from.copy(pull.into, pull.fill, start, start + used);
          pull.fill += used;
          if (used > 0) this.tell(pull);
        }
        if (used < n) {
          // Kept for the next pull, after what the spill already holds.
          if (this.spillAt + this.spillLen + (n - used) > this.spill.length) {
            this.spill.copyWithin(0, this.spillAt, this.spillAt + this.spillLen);
            this.spillAt = 0;
          }
          if (this.spillLen + (n - used) > this.spill.length) {
            const bigger = Buffer.allocUnsafe(this.spillLen + (n - used));
            this.spill.copy(bigger, 0, 0, this.spillLen);
            this.spill = bigger;
          }
          if (from === this.spill) this.spill.copyWithin(this.spillAt + this.spillLen, start + used, end);
          else from.copy(this.spill, this.spillAt + this.spillLen, start + used, end);
          this.spillLen += n - used;
        }
        if (pull && (pull.fill === pull.end || (this.bodyLeft === 0 && this.spillLen === 0))) this.finishPull();
        else if (this.bodyLeft === 0) this.bodyEnded();
        return;
      }
      case 'error-body':
        this.takeErrorBytes(Buffer.from(from.subarray(start, end)));
        return;
      default:
        this.fail(Object.assign(new Error('Azure sent bytes nobody asked for'), { code: 'ECONNRESET' }));
    }
  }

  private parseHead(): void {
    const end = this.head.indexOf('\r\n\r\n', 0, 'latin1');
    if (end < 0 || end + 4 > this.headLen) {
      if (this.headLen >= MAX_HEAD) this.fail(new RestError('the answer\'s headers are too long', { code: 'REQUEST_SEND_ERROR' }));
      return;
    }
    const lines = this.head.toString('latin1', 0, end).split('\r\n');
    const status = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '');
    if (!status) return this.fail(new RestError('Azure\'s answer is not HTTP/1.1', { code: 'REQUEST_SEND_ERROR' }));
    const headers = new Map<string, string>();
    for (const line of lines.slice(1)) {
      const colon = line.indexOf(':');
      if (colon > 0) headers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
    }
    const code = Number(status[1]);
    this.keepAlive = headers.get('connection')?.toLowerCase() !== 'close';
    this.headersArrived();
    const length = Number(headers.get('content-length') ?? NaN);
    if (code >= 200 && code < 300) {
      if (!Number.isSafeInteger(length) || headers.has('transfer-encoding')) {
        return this.fail(new RestError(`Azure answered a ranged GET without a Content-Length (${code})`, { code: 'REQUEST_SEND_ERROR', statusCode: code }));
      }
      this.phase = 'body';
      this.bodyLeft = length;
      this.spillAt = 0;
      this.spillLen = 0;
      this.consume(this.head, end + 4, this.headLen);
      if (this.phase === 'body' || this.phase === 'idle') this.resolveAnswer({ status: code, headers });
      return;
    }
    // Not 2xx: the (small) error body is read whole, then the connection is closed.
    this.phase = 'error-body';
    this.keepAlive = false;
    this.chunkedError = /chunked/i.test(headers.get('transfer-encoding') ?? '');
    this.bodyLeft = Number.isSafeInteger(length) ? length : MAX_ERROR_BODY;
    this.errorBody = [];
    this.errorBytes = 0;
    this.errorHead = { status: code, headers };
    this.takeErrorBytes(Buffer.from(this.head.subarray(end + 4, this.headLen)));
  }

  private errorHead: Head | undefined;

  private takeErrorBytes(bytes: Buffer): void {
    this.errorBody.push(bytes);
    this.errorBytes += bytes.length;
    const text = this.chunkedError ? Buffer.concat(this.errorBody).toString('latin1') : '';
    if (this.errorBytes >= this.bodyLeft || this.errorBytes >= MAX_ERROR_BODY || (this.chunkedError && /(^|\r\n)0\r\n\r\n$/.test(text))) this.finishError();
  }

  private finishError(): void {
    const head = this.errorHead;
    if (this.phase !== 'error-body' || !head) return;
    let body = Buffer.concat(this.errorBody).toString('utf8');
    if (this.chunkedError) body = dechunk(body);
    head.headers.set('x-blobdisk-error-body', body);
    this.phase = 'closed';
    this.resolveAnswer(head);
    this.socket.destroy();
  }

  private resolveAnswer(head: Head): void {
    const answer = this.answer;
    this.answer = undefined;
    answer?.resolve(head);
  }

  pull(into: Buffer, offset: number, length: number, progress?: (filled: number) => void): Promise<number> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.current) return Promise.reject(new Error('a pull is under way'));
    // Bytes that arrived while nobody asked come first.
    const fromSpill = Math.min(this.spillLen, length);
    this.spill.copy(into, offset, this.spillAt, this.spillAt + fromSpill);
    this.spillAt += fromSpill;
    this.spillLen -= fromSpill;
    if (this.spillLen === 0) this.spillAt = 0;
    if (fromSpill === length || this.bodyLeft === 0) {
      if (this.bodyLeft === 0 && this.spillLen === 0) this.bodyEnded();
      return Promise.resolve(fromSpill);
    }
    if (fromSpill > 0) progress?.(fromSpill);
    return new Promise<number>((resolve, reject) => {
      this.current = { into, start: offset, fill: offset + fromSpill, end: offset + length, resolve, reject, progress };
      this.socket.resume();
    });
  }

  private finishPull(): void {
    const pull = this.current;
    if (!pull) return;
    this.current = undefined;
    pull.resolve(pull.fill - pull.start);
    if (this.bodyLeft === 0) this.bodyEnded();
  }

  /** The whole body arrived; once it is also pulled, the connection is free. */
  private bodyEnded(): void {
    if (this.phase !== 'body' || this.bodyLeft > 0 || this.spillLen > 0 || this.current) return;
    this.detach?.();
    if (this.keepAlive) {
      this.phase = 'idle';
      this.onDone(this, true);
    } else {
      this.phase = 'closed';
      this.socket.destroy();
      this.onDone(this, false);
    }
  }

  cancel(): void {
    if (this.phase === 'idle' || this.phase === 'closed') return;
    this.fail(Object.assign(new Error('the body was left unread'), { name: 'AbortError' }));
  }

  fail(e: Error): void {
    if (this.phase === 'closed' && this.failure) return;
    this.phase = 'closed';
    this.failure ??= e instanceof RestError || (e as { name?: string }).name === 'AbortError' ? e : new RestError(e.message, { code: (e as { code?: string }).code ?? RestError.REQUEST_SEND_ERROR });
    this.detach?.();
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.socket.destroy();
    const answer = this.answer;
    this.answer = undefined;
    answer?.reject(this.failure);
    const pull = this.current;
    this.current = undefined;
    if (pull && pull.fill > pull.start) pull.resolve(pull.fill - pull.start);
    else pull?.reject(this.failure);
    this.onDone(this, false);
  }
}

/** Decodes a chunked body (an error's XML). */
function dechunk(text: string): string {
  let out = '';
  let at = 0;
  for (;;) {
    const eol = text.indexOf('\r\n', at);
    if (eol < 0) return out;
    const size = parseInt(text.slice(at, eol), 16);
    if (!Number.isFinite(size) || size <= 0) return out;
    out += text.slice(eol + 2, eol + 2 + size);
    at = eol + 2 + size + 2;
  }
}

/** Whether `request` is a GET this client serves itself. */
function direct(request: PipelineRequest): boolean {
  if (request.method !== 'GET' || !request.headers.has('x-ms-range')) return false;
  if (request.agent !== undefined || request.proxySettings !== undefined || request.tlsSettings !== undefined) return false;
  const protocol = new URL(request.url).protocol;
  return protocol === 'http:' || protocol === 'https:';
}

/** Body of a direct answer, found by its response. */
const bodies = new WeakMap<PipelineResponse, DirectBody>();

/** The direct body of a response this client gave, if it is one. */
export function directBody(response: PipelineResponse): DirectBody | undefined {
  return bodies.get(response);
}

export class DirectClient implements HttpClient {
  private readonly fallback: HttpClient = createDefaultHttpClient();
  private readonly idle = new Map<string, Connection[]>();
  private closed = false;

  async sendRequest(request: PipelineRequest): Promise<PipelineResponse> {
    if (this.closed || !direct(request)) return this.fallback.sendRequest(request);
    const url = new URL(request.url);
    const path = `${url.pathname}${url.search}`;
    // A kept connection the server closed meanwhile fails before any answer: once more on a new one.
    for (let attempt = 0; ; attempt++) {
      const kept = attempt === 0 ? this.take(url.origin) : undefined;
      const conn = kept ?? this.open(url);
      conn.use();
      conn.guard(request);
      try {
        const head = await conn.send(request, path);
        return this.respond(request, conn, head);
      } catch (e) {
        if (kept === undefined || conn.answered || request.abortSignal?.aborted) throw e;
      }
    }
  }

  private respond(request: PipelineRequest, conn: Connection, head: Head): PipelineResponse {
    const headers = createHttpHeaders();
    for (const [name, value] of head.headers) if (name !== 'x-blobdisk-error-body') headers.set(name, value);
    const response: PipelineResponse = { request, status: head.status, headers };
    const errorBody = head.headers.get('x-blobdisk-error-body');
    if (errorBody !== undefined) response.bodyAsText = errorBody;
    else bodies.set(response, new DirectBody(conn));
    return response;
  }

  private open(url: URL): Connection {
    const conn = new Connection(new URL(url.origin));
    conn.onDone = (c, reusable) => {
      if (!reusable || this.closed) {
        this.forget(c);
        return;
      }
      const list = this.idle.get(c.origin.origin) ?? [];
      if (list.length >= MAX_IDLE) {
        c.socket.destroy();
        return;
      }
      list.push(c);
      this.idle.set(c.origin.origin, list);
      c.park(() => this.drop(c));
    };
    return conn;
  }

  private take(origin: string): Connection | undefined {
    const list = this.idle.get(origin);
    for (let c = list?.pop(); c; c = list?.pop()) if (c.reusable && !c.socket.destroyed) return c;
    return undefined;
  }

  private drop(c: Connection): void {
    this.forget(c);
    c.socket.destroy();
  }

  private forget(c: Connection): void {
    const list = this.idle.get(c.origin.origin);
    const i = list?.indexOf(c) ?? -1;
    if (list && i >= 0) list.splice(i, 1);
  }

  close(): void {
    this.closed = true;
    for (const list of this.idle.values()) for (const c of list) c.socket.destroy();
    this.idle.clear();
  }
}
