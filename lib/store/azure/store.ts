/* BlobStore on Azure Blob Storage (or Azurite) through @azure/storage-blob: the only
 * importer of the SDK, with its neighbours in this folder (connection.ts: credentials to
 * a client; convert.ts: shapes and limits; errors.ts: SDK failures to BlobdiskError).
 * Every SDK call goes through call(): it bounds it by a deadline
 * (the SDK's tryTimeoutInMs only sets the server-side timeout, so a host that accepts
 * connections and never answers would otherwise hang the caller) and translates failures.
 * Listings go through eachPage(): one call() per page, following continuation tokens.
 * Ranged reads go through the SDK's pipeline too, but to our own HTTP client
 * (direct-get.ts), whose body the fetcher pulls straight into grain buffers.
 * Azure limits that Azurite does not enforce are checked before sending (Put Page ≤ 4 MiB
 * and 512-aligned, lease durations, page blob size). */

import { BlobServiceClient, newPipeline, type BlobClient, type ContainerClient, type StoragePipelineOptions } from '@azure/storage-blob';
import { Readable } from 'node:stream';
import { BlobdiskError } from '../../errors';
import type { Credentials, StoreOptions } from '../credentials';
import {
  MAX_PUT_PAGE_BYTES,
  PAGE_SIZE,
  type BlobInfo,
  type BlobRef,
  type BlobStore,
  type BlockInfo,
  type ByteRange,
  type CopyStatus,
  type Listing,
  type PageDiff,
  type SnapshotInfo,
  type DirectRead,
  type ReadBody,
  type ReadOptions,
  type WriteConditions,
} from '../types';
import { resolve } from './connection';
import { checkAligned, checkPageBlobSize, conditionsOf, etagOf, invalid, kindOf, lowerKeys, mergeRanges, quoteEtag } from './convert';
import { azureCode, toBlobdiskError, type ErrorContext } from './errors';
import { copyBlob, createSnapshot, listSnapshots, pageRangesDiff, startCopy, type StoreIo } from './snapshots';
import { createPipelineRequest, RestError, type Pipeline as CorePipeline, type PipelineResponse } from '@azure/core-rest-pipeline';
import { DirectClient, directBody } from './direct-get';
import { addLeanHeaders } from './lean-headers';
import { addRetryAfter, corePipeline } from './retry-after';

/** Clear Pages is split into calls of at most this size (Azure would accept more; keep calls bounded). */
export const MAX_CLEAR_PAGES_BYTES = MAX_PUT_PAGE_BYTES;
const RETRY_DELAY_MS = 200;
/** The Blob service version of our own GETs (the SDK sets its own on the requests it makes). */
const SERVICE_VERSION = '2025-01-05';
const MAX_RETRY_DELAY_MS = 2000;

export class AzureStore implements BlobStore {
  private readonly service: BlobServiceClient;
  /** host[:port] of the endpoint, the only part of it that error messages show. */
  private readonly host: string;
  /** How the store signs in, so a refusal can say what to grant. */
  private readonly signIn: Credentials['kind'];
  /** Bound on one SDK call, all tries and retry delays included. */
  private readonly deadlineMs: number;
  private readonly maxTries: number;
  private closed = false;
  /** Azure's endpoints name the account in the host; Azurite's in the path. */
  readonly emulator: boolean;

  /** Throws BlobdiskError('invalid') for malformed credentials, never echoing them. */
  constructor(options: StoreOptions) {
    const { url, credential } = resolve(options.credentials);
    this.host = new URL(url).host;
    this.emulator = new URL(url).pathname.replace(/\/+$/, '') !== '';
    this.signIn = options.credentials.kind;
    this.maxTries = Math.max(1, Math.floor(options.maxTries));
    this.deadlineMs = options.deadlineMs ?? this.maxTries * options.tryTimeoutMs + (this.maxTries - 1) * MAX_RETRY_DELAY_MS;
    // A try never outlasts the whole request.
    const tryTimeoutMs = Math.min(options.tryTimeoutMs, this.deadlineMs);
    const pipeline: StoragePipelineOptions = {
      retryOptions: {
        maxTries: this.maxTries,
        // Sent to the server as whole seconds (`timeout=`); our deadline bounds the client side.
        tryTimeoutInMs: Math.max(1000, tryTimeoutMs),
        retryDelayInMs: RETRY_DELAY_MS,
        maxRetryDelayInMs: MAX_RETRY_DELAY_MS,
      },
      keepAliveOptions: { enable: true },
      userAgentOptions: { userAgentPrefix: 'blobdisk' },
    };
    const shared = newPipeline(credential, pipeline);
    this.service = new BlobServiceClient(url, shared);
    addRetryAfter(shared);
    addLeanHeaders(shared);
    this.core = corePipeline(shared, 'direct GET');
  }

  /** The SDK's pipeline, which our ranged GETs go through with the direct client. */
  private readonly core: CorePipeline;
  private readonly direct = new DirectClient();

  /** What snapshots.ts uses of this store. */
  private readonly io: StoreIo = {
    call: (ctx, fn, signal) => this.call(ctx, fn, signal),
    eachPage: (ctx, byPage, each, signal) => this.eachPage(ctx, byPage, each, signal),
    container: (name) => this.container(name),
    blob: (ref) => this.blob(ref),
    ctx: (op, ref) => this.ctx(op, ref),
    memo: { flatSnapshots: false },
  };

  /** Runs one SDK request: bounded by the deadline, errors translated. */
  private async call<T>(ctx: Omit<ErrorContext, 'host'>, fn: (signal: AbortSignal) => Promise<T>, callerSignal?: AbortSignal): Promise<T> {
    if (this.closed) throw new BlobdiskError('failed', `${ctx.op} failed: the store is closed`);
    const deadline = AbortSignal.timeout(this.deadlineMs);
    const signal = callerSignal === undefined ? deadline : AbortSignal.any([deadline, callerSignal]);
    try {
      return await fn(signal);
    } catch (e) {
      throw toBlobdiskError(e, { ...ctx, host: this.host, callerAborted: callerSignal?.aborted === true, signIn: this.signIn });
    }
  }

  /** Runs a paged listing: one call() per page, `each` on every page, until the last. */
  private async eachPage<P extends { continuationToken?: string | undefined }>(
    ctx: Omit<ErrorContext, 'host'>,
    byPage: (settings: { continuationToken?: string }, abortSignal: AbortSignal) => AsyncIterableIterator<P>,
    each: (page: P) => void,
    callerSignal?: AbortSignal,
  ): Promise<void> {
    let marker: string | undefined;
    do {
      const settings = marker === undefined ? {} : { continuationToken: marker };
      const page = await this.call(
        ctx,
        async (abortSignal) => {
          const r = await byPage(settings, abortSignal).next();
          return r.done === true ? undefined : r.value;
        },
        callerSignal,
      );
      if (page === undefined) return;
      each(page);
      marker = page.continuationToken || undefined;
    } while (marker !== undefined);
  }

  private container(name: string): ContainerClient {
    return this.service.getContainerClient(name);
  }

  private blob(ref: BlobRef): BlobClient {
    const client = this.container(ref.container).getBlobClient(ref.name);
    return ref.snapshot === undefined ? client : client.withSnapshot(ref.snapshot);
  }

  private ctx(op: string, ref: BlobRef): { op: string; container: string; blob: string } {
    return { op, container: ref.container, blob: ref.snapshot === undefined ? ref.name : `${ref.name} (snapshot ${ref.snapshot})` };
  }

  async listContainers(): Promise<string[]> {
    const names: string[] = [];
    await this.eachPage(
      { op: 'listContainers' },
      (settings, abortSignal) => this.service.listContainers({ abortSignal }).byPage(settings),
      (page) => {
        for (const item of page.containerItems) names.push(item.name);
      },
    );
    return names;
  }

  async checkContainer(container: string): Promise<void> {
    await this.call({ op: 'checkContainer', container }, (abortSignal) => this.container(container).getProperties({ abortSignal }));
  }

  async createContainer(container: string): Promise<void> {
    await this.call({ op: 'createContainer', container }, (abortSignal) => this.container(container).create({ abortSignal }));
  }

  async listDirectory(container: string, prefix: string): Promise<Listing> {
    const blobs: BlobInfo[] = [];
    const prefixes: string[] = [];
    const client = this.container(container);
    await this.eachPage(
      { op: 'listDirectory', container },
      (settings, abortSignal) => client.listBlobsByHierarchy('/', { prefix, includeMetadata: true, abortSignal }).byPage(settings),
      (page) => {
        for (const p of page.segment.blobPrefixes ?? []) prefixes.push(p.name);
        for (const item of page.segment.blobItems) {
          blobs.push({
            name: item.name,
            kind: kindOf(item.properties.blobType),
            size: item.properties.contentLength ?? 0,
            etag: quoteEtag(item.properties.etag),
            lastModified: item.properties.lastModified,
            metadata: lowerKeys(item.metadata),
          });
        }
      },
    );
    return { blobs, prefixes };
  }

  async getInfo(ref: BlobRef): Promise<BlobInfo> {
    const p = await this.call(this.ctx('getInfo', ref), (abortSignal) => this.blob(ref).getProperties({ abortSignal }));
    return {
      name: ref.name,
      kind: kindOf(p.blobType),
      size: p.contentLength ?? 0,
      etag: etagOf(p),
      lastModified: p.lastModified ?? new Date(0),
      metadata: lowerKeys(p.metadata),
      leased: p.leaseState === 'leased',
      ...(p.copyStatus !== undefined ? { copyStatus: p.copyStatus } : {}),
    };
  }

  async read(ref: BlobRef, offset: number, length: number, options: ReadOptions = {}): Promise<ReadBody> {
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
      throw invalid('read', ref, `bad range offset ${offset} length ${length}`);
    }
    // A zero count would make the SDK ask for everything up to the end of the blob.
    if (length === 0) return (async function* empty() {})();
    const ctx = this.ctx('read', ref);
    const response = await this.call(ctx, (abortSignal) => this.get(ref, offset, length, options.etag, abortSignal), options.signal);
    const translate = (e: unknown): BlobdiskError => toBlobdiskError(e, { ...ctx, host: this.host, callerAborted: options.signal?.aborted === true, signIn: this.signIn });
    const first = directBody(response);
    if (first === undefined) return streamOf(response, translate);
    // A body cut short is asked for once more from where it stopped, as the SDK's download
    // does, up to the store's tries; an abort (the deadline, or the caller) ends it.
    let body = first;
    let pos = offset;
    let retries = this.maxTries - 1;
    const end = offset + length;
    const pull = async (into: Buffer, at: number, want: number, progress?: (filled: number) => void): Promise<number> => {
      let got = 0;
      while (got < want && pos < end) {
        try {
          const base = got;
          const n = await body.pull(into, at + got, want - got, progress && ((filled) => progress(base + filled)));
          if (n === 0) throw Object.assign(new Error('the body ended early'), { code: 'ECONNRESET' });
          got += n;
          pos += n;
        } catch (e) {
          if (retries <= 0 || (e as { name?: string }).name === 'AbortError' || options.signal?.aborted) throw translate(e);
          retries--;
          const again = await this.call(ctx, (abortSignal) => this.get(ref, pos, end - pos, options.etag, abortSignal), options.signal);
          const next = directBody(again);
          if (next === undefined) throw new BlobdiskError('failed', `read of ${ref.name} failed: the retried GET came without a body`);
          body = next;
        }
      }
      return got;
    };
    const direct: DirectRead = { pull, cancel: () => body.cancel() };
    return {
      direct,
      async *[Symbol.asyncIterator](): AsyncGenerator<Buffer> {
        try {
          while (pos < end) {
            const buf = Buffer.allocUnsafe(Math.min(256 * 1024, end - pos));
            yield buf.subarray(0, await pull(buf, 0, buf.length));
          }
        } finally {
          if (pos < end) body.cancel();
        }
      },
    };
  }

  /** One ranged GET through the SDK's pipeline (signing, retries, headers) and our direct
   *  client; rejects with the SDK's RestError when Azure answers other than 200 or 206. */
  private async get(ref: BlobRef, offset: number, length: number, etag: string | undefined, abortSignal: AbortSignal): Promise<PipelineResponse> {
    const request = createPipelineRequest({ url: this.blob(ref).url, method: 'GET', abortSignal, streamResponseStatusCodes: new Set([200, 206]) });
    request.headers.set('x-ms-range', `bytes=${offset}-${offset + length - 1}`);
    request.headers.set('x-ms-version', SERVICE_VERSION);
    if (etag !== undefined) request.headers.set('If-Match', etag);
    const response = await this.core.sendRequest(this.direct, request);
    if (response.status === 200 || response.status === 206) return response;
    response.readableStreamBody?.resume();
    const code = response.headers.get('x-ms-error-code');
    throw new RestError(`GET answered ${response.status}${code !== undefined ? ` ${code}` : ''}`, { statusCode: response.status, request, response, ...(code !== undefined ? { code } : {}) });
  }

  async pageRanges(ref: BlobRef, start: number, end: number, options: ReadOptions = {}): Promise<ByteRange[]> {
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0) throw invalid('pageRanges', ref, `bad window ${start}-${end}`);
    if (end <= start) return [];
    // Ask for the 512-aligned window around [start, end) and clip locally.
    const from = start - (start % PAGE_SIZE);
    const to = Math.ceil(end / PAGE_SIZE) * PAGE_SIZE;
    const client = this.blob(ref).getPageBlobClient();
    const conditions = options.etag === undefined ? {} : { ifMatch: options.etag };
    const raw: ByteRange[] = [];
    try {
      await this.eachPage(
        this.ctx('pageRanges', ref),
        (settings, abortSignal) => client.listPageRanges(from, to - from, { conditions, abortSignal }).byPage(settings),
        (page) => {
          // Azure's ends are inclusive.
          for (const r of page.pageRange ?? []) raw.push({ start: Math.max(r.start, start), end: Math.min(r.end + 1, end) });
        },
        options.signal,
      );
    } catch (e) {
      // A window beyond the end of the blob holds no pages (Azure may answer 416 for it).
      if (azureCode(e).status === 416) return [];
      throw e;
    }
    return mergeRanges(raw);
  }

  async blockList(ref: BlobRef): Promise<BlockInfo[]> {
    const r = await this.call(this.ctx('blockList', ref), (abortSignal) =>
      this.blob(ref).getBlockBlobClient().getBlockList('committed', { abortSignal }),
    );
    return (r.committedBlocks ?? []).map((b) => ({ id: b.name, size: b.size }));
  }

  async createPageBlob(ref: BlobRef, size: number, options: { metadata?: Record<string, string>; overwrite?: boolean } = {}): Promise<string> {
    checkPageBlobSize('createPageBlob', ref, size);
    const conditions = options.overwrite === true ? {} : { ifNoneMatch: '*' };
    const r = await this.call({ ...this.ctx('createPageBlob', ref), createOnly: options.overwrite !== true }, (abortSignal) =>
      this.blob(ref).getPageBlobClient().create(size, { metadata: options.metadata ?? {}, conditions, abortSignal }),
    );
    return etagOf(r);
  }

  async createBlockBlob(ref: BlobRef, options: { metadata?: Record<string, string>; overwrite?: boolean } = {}): Promise<string> {
    const conditions = options.overwrite === true ? {} : { ifNoneMatch: '*' };
    const r = await this.call({ ...this.ctx('createBlockBlob', ref), createOnly: options.overwrite !== true }, (abortSignal) =>
      this.blob(ref).getBlockBlobClient().upload(Buffer.alloc(0), 0, { metadata: options.metadata ?? {}, conditions, abortSignal }),
    );
    return etagOf(r);
  }

  async resizePageBlob(ref: BlobRef, size: number, conditions?: WriteConditions): Promise<string> {
    checkPageBlobSize('resizePageBlob', ref, size);
    const r = await this.call(this.ctx('resizePageBlob', ref), (abortSignal) =>
      this.blob(ref).getPageBlobClient().resize(size, { conditions: conditionsOf(conditions), abortSignal }),
    );
    return etagOf(r);
  }

  async putPages(ref: BlobRef, offset: number, data: Buffer, conditions?: WriteConditions): Promise<string> {
    // Azurite accepts larger Put Page bodies; Azure answers 413. Refuse before sending.
    checkAligned('putPages', ref, offset, data.length, MAX_PUT_PAGE_BYTES);
    const r = await this.call(this.ctx('putPages', ref), (abortSignal) =>
      this.blob(ref).getPageBlobClient().uploadPages(data, offset, data.length, { conditions: conditionsOf(conditions), abortSignal }),
    );
    return etagOf(r);
  }

  async clearPages(ref: BlobRef, offset: number, length: number, conditions?: WriteConditions): Promise<string> {
    checkAligned('clearPages', ref, offset, length, Number.MAX_SAFE_INTEGER);
    const client = this.blob(ref).getPageBlobClient();
    let ifMatch = conditions?.ifMatch;
    let etag = '';
    for (let at = offset; at < offset + length; at += MAX_CLEAR_PAGES_BYTES) {
      const count = Math.min(MAX_CLEAR_PAGES_BYTES, offset + length - at);
      // Each call changes the ETag: the caller's If-Match guards the first, ours the rest.
      const c = conditionsOf({ ...(conditions?.leaseId !== undefined ? { leaseId: conditions.leaseId } : {}), ...(ifMatch !== undefined ? { ifMatch } : {}) });
      const r = await this.call(this.ctx('clearPages', ref), (abortSignal) => client.clearPages(at, count, { conditions: c, abortSignal }));
      etag = etagOf(r);
      if (ifMatch !== undefined) ifMatch = etag;
    }
    return etag;
  }

  async stageBlock(ref: BlobRef, blockId: string, data: Buffer, conditions?: WriteConditions): Promise<void> {
    // Put Block takes no If-Match; only the lease applies (the commit carries the If-Match).
    const lease = conditions?.leaseId === undefined ? {} : { leaseId: conditions.leaseId };
    await this.call(this.ctx('stageBlock', ref), (abortSignal) =>
      this.blob(ref).getBlockBlobClient().stageBlock(blockId, data, data.length, { conditions: lease, abortSignal }),
    );
  }

  async commitBlockList(ref: BlobRef, blockIds: string[], options: WriteConditions & { metadata?: Record<string, string> } = {}): Promise<string> {
    let metadata = options.metadata;
    if (metadata === undefined) {
      // Put Block List replaces the metadata; keep the blob's own unless asked otherwise.
      metadata = await this.getInfo(ref).then(
        (info) => ({ ...info.metadata }),
        (e: unknown) => {
          if (e instanceof BlobdiskError && e.kind === 'not-found') return {};
          throw e;
        },
      );
    }
    const r = await this.call(this.ctx('commitBlockList', ref), (abortSignal) =>
      this.blob(ref).getBlockBlobClient().commitBlockList(blockIds, { metadata, conditions: conditionsOf(options), abortSignal }),
    );
    return etagOf(r);
  }

  async setMetadata(ref: BlobRef, metadata: Record<string, string>, conditions?: WriteConditions): Promise<string> {
    const r = await this.call(this.ctx('setMetadata', ref), (abortSignal) =>
      this.blob(ref).setMetadata(metadata, { conditions: conditionsOf(conditions), abortSignal }),
    );
    return etagOf(r);
  }

  async deleteBlob(ref: BlobRef, conditions?: WriteConditions): Promise<void> {
    await this.call(this.ctx('deleteBlob', ref), (abortSignal) =>
      // A snapshot is deleted alone; Azure refuses deleteSnapshots on one.
      this.blob(ref).delete({ ...(ref.snapshot === undefined ? { deleteSnapshots: 'include' as const } : {}), conditions: conditionsOf(conditions), abortSignal }),
    );
  }

  async copyBlob(source: BlobRef, target: BlobRef): Promise<string> {
    await copyBlob(this.io, source, target);
    return (await this.getInfo(target)).etag;
  }

  // Snapshots, copies and the page-range diff live in snapshots.ts, through the same funnel.
  createSnapshot = (ref: BlobRef, metadata?: Record<string, string>): Promise<string> => createSnapshot(this.io, ref, metadata);
  listSnapshots = (container: string, prefix: string, deep = false): Promise<SnapshotInfo[]> => listSnapshots(this.io, container, prefix, deep);
  startCopy = (source: BlobRef, target: BlobRef, metadata?: Record<string, string>): Promise<CopyStatus> => startCopy(this.io, source, target, metadata);
  pageRangesDiff = (ref: BlobRef, since: string, start: number, end: number): Promise<PageDiff> => pageRangesDiff(this.io, ref, since, start, end);

  async acquireLease(ref: BlobRef, durationSeconds: number, proposedLeaseId?: string, ifMatch?: string): Promise<string> {
    if (durationSeconds !== -1 && !(Number.isInteger(durationSeconds) && durationSeconds >= 15 && durationSeconds <= 60)) {
      throw invalid('acquireLease', ref, `lease duration ${durationSeconds} is not -1 or 15..60 seconds`);
    }
    const r = await this.call(this.ctx('acquireLease', ref), (abortSignal) =>
      this.blob(ref).getBlobLeaseClient(proposedLeaseId).acquireLease(durationSeconds, { abortSignal, ...(ifMatch !== undefined ? { conditions: { ifMatch } } : {}) }),
    );
    if (r.leaseId === undefined) throw new BlobdiskError('failed', 'acquireLease failed: Azure answered without a lease id');
    return r.leaseId;
  }

  async renewLease(ref: BlobRef, leaseId: string): Promise<void> {
    await this.call(this.ctx('renewLease', ref), (abortSignal) => this.blob(ref).getBlobLeaseClient(leaseId).renewLease({ abortSignal }));
  }

  async releaseLease(ref: BlobRef, leaseId: string): Promise<void> {
    await this.call(this.ctx('releaseLease', ref), (abortSignal) => this.blob(ref).getBlobLeaseClient(leaseId).releaseLease({ abortSignal }));
  }

  async breakLease(ref: BlobRef): Promise<void> {
    try {
      await this.call(this.ctx('breakLease', ref), (abortSignal) => this.blob(ref).getBlobLeaseClient().breakLease(0, { abortSignal }));
    } catch (e) {
      // Nothing to break is fine: the blob is not leased afterwards either way.
      if (azureCode(e).code === 'LeaseNotPresentWithLeaseOperation') return;
      throw e;
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    this.direct.close();
  }
}

/** The body of an answer that came through the SDK's own client (through a proxy, say). */
function streamOf(response: PipelineResponse, translate: (e: unknown) => BlobdiskError): ReadBody {
  const body = response.readableStreamBody;
  if (body === undefined) throw new BlobdiskError('failed', 'read failed: Azure answered without a body');
  return (async function* stream(): AsyncGenerator<Buffer> {
    try {
      for await (const chunk of body) yield Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as string | Uint8Array);
    } catch (e) {
      throw translate(e);
    } finally {
      // Stops the transfer when the consumer leaves early.
      if (body instanceof Readable && !body.destroyed) body.destroy();
    }
  })();
}
