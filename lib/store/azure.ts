/* BlobStore on Azure Blob Storage (or Azurite) through @azure/storage-blob.
 * Every SDK call goes through call(): it counts the request, bounds it by a deadline
 * (the SDK's tryTimeoutInMs only sets the server-side timeout, so a host that accepts
 * connections and never answers would otherwise hang the caller) and translates failures
 * in lib/store/azure-errors.ts. Azure limits that Azurite does not enforce are checked
 * here before sending (Put Page ≤ 4 MiB and 512-aligned, lease durations, page blob size). */

import {
  AnonymousCredential,
  BlobServiceClient,
  StorageSharedKeyCredential,
  type BlobClient,
  type BlobRequestConditions,
  type ContainerClient,
  type StoragePipelineOptions,
} from '@azure/storage-blob';
import { Readable } from 'node:stream';
import { BlobdiskError } from '../errors';
import { azureCode, toBlobdiskError, type ErrorContext } from './azure-errors';
import type { TokenCredential } from '@azure/identity';
import type { Credentials, StoreOptions } from './credentials';
import {
  MAX_PAGE_BLOB_BYTES,
  MAX_PUT_PAGE_BYTES,
  PAGE_SIZE,
  type BlobInfo,
  type BlobKind,
  type BlobRef,
  type BlobStore,
  type BlockInfo,
  type ByteRange,
  type Listing,
  type ReadOptions,
  type StoreCounters,
  type WriteConditions,
} from './types';

/** Clear Pages is split into calls of at most this size (Azure would accept more; keep calls bounded). */
export const MAX_CLEAR_PAGES_BYTES = MAX_PUT_PAGE_BYTES;
const RETRY_DELAY_MS = 200;
const MAX_RETRY_DELAY_MS = 2000;
const COPY_POLL_MS = [200, 500, 1000, 2000] as const;

/** The emulator's well-known account (public, documented by Microsoft). */
export const DEVSTORE_ACCOUNT = 'devstoreaccount1';
export const DEVSTORE_KEY = 'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==';

interface Resolved {
  readonly url: string;
  readonly credential: StorageSharedKeyCredential | AnonymousCredential | TokenCredential;
}

/** Microsoft's own sign-in hosts: MSAL knows them; any other (Azure Stack, a private cloud)
 *  has no instance discovery, which would otherwise go to login.microsoftonline.com. */
const KNOWN_AUTHORITY_HOSTS = new Set(['login.microsoftonline.com', 'login.chinacloudapi.cn', 'login.microsoftonline.us']);

/** DefaultAzureCredential: environment (service principal, workload identity), managed
 *  identity, Azure CLI, ... in the SDK's order. Loaded only when used. */
function entraCredential(env: NodeJS.ProcessEnv = process.env): TokenCredential {
  const { DefaultAzureCredential } = require('@azure/identity') as typeof import('@azure/identity');
  const authority = env.AZURE_AUTHORITY_HOST;
  let custom = false;
  try {
    custom = authority !== undefined && authority !== '' && !KNOWN_AUTHORITY_HOSTS.has(new URL(authority).hostname);
  } catch {
    throw new BlobdiskError('EINVAL', 'AZURE_AUTHORITY_HOST is not a URL; give e.g. https://login.microsoftonline.com');
  }
  return new DefaultAzureCredential(custom ? { disableInstanceDiscovery: true } : {});
}

function malformed(what: string): BlobdiskError {
  return new BlobdiskError('EINVAL', `the connection string is malformed: ${what}`);
}

type Fail = (why: string) => BlobdiskError;

function checkEndpoint(endpoint: string, fail: Fail): string {
  let url: URL;
  try {
    url = new URL(endpoint);
  } catch {
    throw fail('is not a valid URL');
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw fail('must be an http or https URL');
  if (url.search !== '') throw fail('must not contain a query (give the SAS separately)');
  return url.toString().replace(/\/$/, '');
}

function checkKey(key: string, fail: Fail): void {
  if (key === '') throw fail('is empty');
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(key) || key.length % 4 !== 0) throw fail('is not valid base64');
}

function withSas(endpoint: string, sas: string, fail: Fail): Resolved {
  const query = sas.replace(/^\?/, '');
  if (query === '') throw fail('is empty');
  return { url: `${endpoint}?${query}`, credential: new AnonymousCredential() };
}

/** Parses `Name=Value;...` without ever echoing the input (it holds the key or SAS). */
function parseConnectionString(text: string): Resolved {
  const parts = new Map<string, string>();
  for (const part of text.trim().split(';')) {
    if (part.trim() === '') continue;
    const eq = part.indexOf('=');
    if (eq <= 0) throw malformed('a part is not of the form Name=Value');
    parts.set(part.slice(0, eq).trim().toLowerCase(), part.slice(eq + 1).trim());
  }
  if (parts.get('usedevelopmentstorage')?.toLowerCase() === 'true') {
    return { url: `http://127.0.0.1:10000/${DEVSTORE_ACCOUNT}`, credential: new StorageSharedKeyCredential(DEVSTORE_ACCOUNT, DEVSTORE_KEY) };
  }
  const account = parts.get('accountname');
  const key = parts.get('accountkey');
  const sas = parts.get('sharedaccesssignature');
  let endpoint = parts.get('blobendpoint');
  if (endpoint === undefined) {
    if (account === undefined) throw malformed('it has neither BlobEndpoint nor AccountName');
    const protocol = (parts.get('defaultendpointsprotocol') ?? 'https').toLowerCase();
    if (protocol !== 'https' && protocol !== 'http') throw malformed('DefaultEndpointsProtocol must be http or https');
    endpoint = `${protocol}://${account}.blob.${parts.get('endpointsuffix') ?? 'core.windows.net'}`;
  }
  const url = checkEndpoint(endpoint, (why) => malformed(`BlobEndpoint ${why}`));
  if (key !== undefined) {
    if (account === undefined || account === '') throw malformed('AccountKey is given without AccountName');
    checkKey(key, (why) => malformed(`AccountKey ${why}`));
    return { url, credential: new StorageSharedKeyCredential(account, key) };
  }
  if (sas !== undefined) return withSas(url, sas, (why) => malformed(`SharedAccessSignature ${why}`));
  throw malformed('it has neither AccountKey nor SharedAccessSignature');
}

function resolve(credentials: Credentials): Resolved {
  const invalid: Fail = (why) => new BlobdiskError('EINVAL', why);
  switch (credentials.kind) {
    case 'connectionString':
      return parseConnectionString(credentials.connectionString);
    case 'accountKey': {
      if (credentials.account === '') throw invalid('the account name is empty');
      checkKey(credentials.accountKey, (why) => invalid(`the account key ${why}`));
      const url = checkEndpoint(credentials.endpoint, (why) => invalid(`the endpoint ${why}`));
      return { url, credential: new StorageSharedKeyCredential(credentials.account, credentials.accountKey) };
    }
    case 'sas':
      return withSas(checkEndpoint(credentials.endpoint, (why) => invalid(`the endpoint ${why}`)), credentials.sas, (why) => invalid(`the SAS ${why}`));
    case 'entra': {
      const url = checkEndpoint(credentials.endpoint, (why) => invalid(`the endpoint ${why}`));
      if (!url.startsWith('https:')) throw invalid('Microsoft Entra ID sign-in needs an https endpoint');
      return { url, credential: entraCredential() };
    }
  }
}

const KINDS: Readonly<Record<string, BlobKind>> = { PageBlob: 'page', BlockBlob: 'block', AppendBlob: 'append' };

function kindOf(blobType: string | undefined): BlobKind {
  const kind = blobType === undefined ? undefined : KINDS[blobType];
  if (kind === undefined) throw new BlobdiskError('EIO', `Azure reported an unknown blob type`);
  return kind;
}

function lowerKeys(metadata: Record<string, string> | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(metadata ?? {})) out[k.toLowerCase()] = v;
  return out;
}

function conditionsOf(c: WriteConditions | undefined): BlobRequestConditions {
  const out: BlobRequestConditions = {};
  if (c?.leaseId !== undefined) out.leaseId = c.leaseId;
  if (c?.ifMatch !== undefined) out.ifMatch = c.ifMatch;
  return out;
}

/** Listings carry the ETag bare, headers quoted: give callers one form to compare. */
function quoteEtag(etag: string): string {
  return etag.startsWith('"') || etag.startsWith('W/') ? etag : `"${etag}"`;
}

function etagOf(response: { etag?: string }): string {
  if (response.etag === undefined) throw new BlobdiskError('EIO', 'Azure answered without an ETag');
  return quoteEtag(response.etag);
}

function invalid(op: string, ref: BlobRef, why: string): BlobdiskError {
  return new BlobdiskError('EINVAL', `${op} ${ref.container}/${ref.name} failed: ${why}`);
}

function checkAligned(op: string, ref: BlobRef, offset: number, length: number, max: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0 || offset % PAGE_SIZE !== 0) throw invalid(op, ref, `offset ${offset} is not a multiple of ${PAGE_SIZE}`);
  if (!Number.isSafeInteger(length) || length <= 0 || length % PAGE_SIZE !== 0) throw invalid(op, ref, `length ${length} is not a positive multiple of ${PAGE_SIZE}`);
  if (length > max) throw invalid(op, ref, `length ${length} exceeds the Azure limit of ${max} bytes per call`);
}

function checkPageBlobSize(op: string, ref: BlobRef, size: number): void {
  if (!Number.isSafeInteger(size) || size < 0 || size % PAGE_SIZE !== 0 || size > MAX_PAGE_BLOB_BYTES) {
    throw invalid(op, ref, `page blob size ${size} is not a multiple of ${PAGE_SIZE} between 0 and 8 TiB`);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((done) => setTimeout(done, ms));
}

export class AzureStore implements BlobStore {
  readonly counters: StoreCounters = { requests: 0, bytesDown: 0, bytesUp: 0 };
  private readonly service: BlobServiceClient;
  /** host[:port] of the endpoint, the only part of it that error messages show. */
  private readonly host: string;
  private readonly signIn: Credentials['kind'];
  /** Bound on one SDK call, all tries and retry delays included. */
  private readonly deadlineMs: number;
  private readonly maxTries: number;
  private closed = false;

  /** Throws BlobdiskError('EINVAL') for malformed credentials, never echoing them. */
  constructor(options: StoreOptions) {
    const { url, credential } = resolve(options.credentials);
    this.host = new URL(url).host;
    this.signIn = options.credentials.kind;
    this.maxTries = Math.max(1, Math.floor(options.maxTries));
    this.deadlineMs = this.maxTries * options.tryTimeoutMs + (this.maxTries - 1) * MAX_RETRY_DELAY_MS;
    const pipeline: StoragePipelineOptions = {
      retryOptions: {
        maxTries: this.maxTries,
        // Sent to the server as whole seconds (`timeout=`); our deadline bounds the client side.
        tryTimeoutInMs: Math.max(1000, options.tryTimeoutMs),
        retryDelayInMs: RETRY_DELAY_MS,
        maxRetryDelayInMs: MAX_RETRY_DELAY_MS,
      },
      keepAliveOptions: { enable: true },
      userAgentOptions: { userAgentPrefix: 'blobdisk' },
    };
    this.service = new BlobServiceClient(url, credential, pipeline);
  }

  /** Runs one SDK request: counted, bounded by the deadline, errors translated. */
  private async call<T>(ctx: Omit<ErrorContext, 'host'>, fn: (signal: AbortSignal) => Promise<T>, callerSignal?: AbortSignal): Promise<T> {
    if (this.closed) throw new BlobdiskError('EIO', `${ctx.op} failed: the store is closed`);
    this.counters.requests++;
    const deadline = AbortSignal.timeout(this.deadlineMs);
    const signal = callerSignal === undefined ? deadline : AbortSignal.any([deadline, callerSignal]);
    try {
      return await fn(signal);
    } catch (e) {
      throw toBlobdiskError(e, { ...ctx, host: this.host, callerAborted: callerSignal?.aborted === true, signIn: this.signIn });
    }
  }

  private container(name: string): ContainerClient {
    return this.service.getContainerClient(name);
  }

  private blob(ref: BlobRef): BlobClient {
    return this.container(ref.container).getBlobClient(ref.name);
  }

  private ctx(op: string, ref: BlobRef): { op: string; container: string; blob: string } {
    return { op, container: ref.container, blob: ref.name };
  }

  async listContainers(): Promise<string[]> {
    const names: string[] = [];
    let marker: string | undefined;
    do {
      const page = await this.call({ op: 'listContainers' }, async (abortSignal) => {
        const r = await this.service.listContainers({ abortSignal }).byPage(marker === undefined ? {} : { continuationToken: marker }).next();
        return r.done === true ? undefined : r.value;
      });
      for (const item of page?.containerItems ?? []) names.push(item.name);
      marker = page?.continuationToken || undefined;
    } while (marker !== undefined);
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
    let marker: string | undefined;
    do {
      const page = await this.call({ op: 'listDirectory', container }, async (abortSignal) => {
        const iter = client.listBlobsByHierarchy('/', { prefix, includeMetadata: true, abortSignal });
        const r = await iter.byPage(marker === undefined ? {} : { continuationToken: marker }).next();
        return r.done === true ? undefined : r.value;
      });
      for (const p of page?.segment.blobPrefixes ?? []) prefixes.push(p.name);
      for (const item of page?.segment.blobItems ?? []) {
        blobs.push({
          name: item.name,
          kind: kindOf(item.properties.blobType),
          size: item.properties.contentLength ?? 0,
          etag: quoteEtag(item.properties.etag),
          lastModified: item.properties.lastModified,
          metadata: lowerKeys(item.metadata),
        });
      }
      marker = page?.continuationToken || undefined;
    } while (marker !== undefined);
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
    };
  }

  async read(ref: BlobRef, offset: number, length: number, options: ReadOptions = {}): Promise<AsyncIterable<Buffer>> {
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
      throw invalid('read', ref, `bad range offset ${offset} length ${length}`);
    }
    // A zero count would make the SDK ask for everything up to the end of the blob.
    if (length === 0) return (async function* empty() {})();
    const ctx = this.ctx('read', ref);
    const conditions = options.etag === undefined ? {} : { ifMatch: options.etag };
    const response = await this.call(
      ctx,
      (abortSignal) => this.blob(ref).download(offset, length, { conditions, abortSignal, maxRetryRequests: this.maxTries - 1 }),
      options.signal,
    );
    const body = response.readableStreamBody;
    if (body === undefined) throw new BlobdiskError('EIO', 'read failed: Azure answered without a body');
    const counters = this.counters;
    const host = this.host;
    const signIn = this.signIn;
    const signal = options.signal;
    return (async function* stream(): AsyncGenerator<Buffer> {
      try {
        for await (const chunk of body) {
          const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as string | Uint8Array);
          counters.bytesDown += buf.length;
          yield buf;
        }
      } catch (e) {
        throw toBlobdiskError(e, { ...ctx, host, callerAborted: signal?.aborted === true, signIn });
      } finally {
        // Stops the transfer when the consumer leaves early.
        if (body instanceof Readable && !body.destroyed) body.destroy();
      }
    })();
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
    let marker: string | undefined;
    try {
      do {
        const page = await this.call(
          this.ctx('pageRanges', ref),
          async (abortSignal) => {
            const iter = client.listPageRanges(from, to - from, { conditions, abortSignal });
            const r = await iter.byPage(marker === undefined ? {} : { continuationToken: marker }).next();
            return r.done === true ? undefined : r.value;
          },
          options.signal,
        );
        // Azure's ends are inclusive.
        for (const r of page?.pageRange ?? []) raw.push({ start: Math.max(r.start, start), end: Math.min(r.end + 1, end) });
        marker = page?.continuationToken || undefined;
      } while (marker !== undefined);
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
    const r = await this.call(this.ctx('putPages', ref), (abortSignal) => {
      this.counters.bytesUp += data.length;
      return this.blob(ref).getPageBlobClient().uploadPages(data, offset, data.length, { conditions: conditionsOf(conditions), abortSignal });
    });
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
    await this.call(this.ctx('stageBlock', ref), (abortSignal) => {
      this.counters.bytesUp += data.length;
      return this.blob(ref).getBlockBlobClient().stageBlock(blockId, data, data.length, { conditions: lease, abortSignal });
    });
  }

  async commitBlockList(ref: BlobRef, blockIds: string[], options: WriteConditions & { metadata?: Record<string, string> } = {}): Promise<string> {
    let metadata = options.metadata;
    if (metadata === undefined) {
      // Put Block List replaces the metadata; keep the blob's own unless asked otherwise.
      metadata = await this.getInfo(ref).then(
        (info) => ({ ...info.metadata }),
        (e: unknown) => {
          if (e instanceof BlobdiskError && e.code === 'ENOENT') return {};
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
      this.blob(ref).delete({ deleteSnapshots: 'include', conditions: conditionsOf(conditions), abortSignal }),
    );
  }

  async copyBlob(source: BlobRef, target: BlobRef): Promise<string> {
    // Within one account Copy Blob authorizes the source by our Shared Key; with a SAS the
    // source URL carries it. The copy may finish at once or stay pending: poll until done.
    const sourceUrl = this.blob(source).url;
    const dest = this.blob(target);
    const ctx = { op: `copyBlob ${source.container}/${source.name} to`, container: target.container, blob: target.name };
    const started = await this.call(ctx, async (abortSignal) => {
      const poller = await dest.beginCopyFromURL(sourceUrl, { abortSignal });
      return poller.getOperationState();
    });
    let status = started.result?.copyStatus ?? 'pending';
    for (let i = 0; status === 'pending'; i++) {
      await sleep(COPY_POLL_MS[Math.min(i, COPY_POLL_MS.length - 1)] ?? 2000);
      const p = await this.call(ctx, (abortSignal) => dest.getProperties({ abortSignal }));
      status = p.copyStatus ?? 'success';
    }
    if (status !== 'success') throw new BlobdiskError('EIO', `${ctx.op} ${target.container}/${target.name} failed: the server-side copy ended as ${status}`);
    return (await this.getInfo(target)).etag;
  }

  async acquireLease(ref: BlobRef, durationSeconds: number, proposedLeaseId?: string): Promise<string> {
    if (durationSeconds !== -1 && !(Number.isInteger(durationSeconds) && durationSeconds >= 15 && durationSeconds <= 60)) {
      throw invalid('acquireLease', ref, `lease duration ${durationSeconds} is not -1 or 15..60 seconds`);
    }
    const r = await this.call(this.ctx('acquireLease', ref), (abortSignal) =>
      this.blob(ref).getBlobLeaseClient(proposedLeaseId).acquireLease(durationSeconds, { abortSignal }),
    );
    if (r.leaseId === undefined) throw new BlobdiskError('EIO', 'acquireLease failed: Azure answered without a lease id');
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
  }
}

/** Sorts, drops empty ranges and merges overlapping or adjacent ones. */
export function mergeRanges(ranges: readonly ByteRange[]): ByteRange[] {
  const sorted = ranges.filter((r) => r.end > r.start).sort((a, b) => a.start - b.start);
  const out: { start: number; end: number }[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last !== undefined && r.start <= last.end) last.end = Math.max(last.end, r.end);
    else out.push({ start: r.start, end: r.end });
  }
  return out;
}
