/* The one place where Azure SDK failures become BlobdiskError (the contract in types.ts).
 * Messages are built from the status, the service's error code and names we already know
 * (container, blob, endpoint host): never from the SDK's message or request URL, which can
 * carry a SAS. Everything still passes through redact() as a safety net. */

import { BlobdiskError, isBlobdiskError, type ErrorKind } from '../../errors';
import { redact } from '../../redact';

export interface ErrorContext {
  /** Store method that failed, e.g. 'read'. */
  readonly op: string;
  /** host[:port] of the blob endpoint: never the full URL. */
  readonly host: string;
  readonly container?: string;
  readonly blob?: string;
  /** A create-only request (If-None-Match: *): a failed condition means "exists". */
  readonly createOnly?: boolean;
  /** The caller's own AbortSignal fired (as opposed to our deadline). */
  readonly callerAborted?: boolean;
  /** How the store signs in, so a refusal can say what to grant. */
  readonly signIn?: 'connectionString' | 'accountKey' | 'sas' | 'entra';
}

/** Errors of @azure/identity: signing in failed before any request reached Azure Storage. */
const SIGN_IN_ERRORS = new Set(['AuthenticationError', 'AggregateAuthenticationError', 'CredentialUnavailableError', 'AuthenticationRequiredError']);

/** What a store operation needs permission to do, in the words of SAS permissions and roles. */
function needed(op: string): string {
  if (op === 'listContainers') return 'listing containers';
  if (op === 'list' || op === 'listBlobs' || op === 'listSnapshots') return 'listing blobs';
  if (/^delete/.test(op)) return 'deleting blobs';
  if (/^(getInfo|read|pageRanges|pageRangesDiff|blockList|checkContainer)$/.test(op)) return 'reading blobs';
  return 'writing blobs';
}

/** The one line that says which permission a refused request lacked, and how to grant it. */
function permissionReason(ctx: ErrorContext, tag: string): string {
  const need = needed(ctx.op);
  if (ctx.signIn === 'entra') {
    return `the signed-in identity has no data role allowing ${need} ${tag}; assign it Storage Blob Data Contributor on the account or container (Storage Blob Data Reader is enough with --read-only)`;
  }
  if (ctx.signIn === 'sas' || ctx.signIn === 'connectionString') {
    return `the SAS token does not allow ${need} ${tag}; make one with sp=rwdlc (and srt=sco for an account SAS, or a container SAS with --container)`;
  }
  return `the credentials do not allow ${need} ${tag}`;
}

/** The reason a Microsoft Entra ID sign-in failed, from @azure/identity's error: Entra's own
 *  AADSTS code and sentence when there is one. */
function signInReason(e: unknown): string {
  const o = e as { name?: string; message?: string };
  const aadsts = /AADSTS\d+: [^.]*\./.exec(o.message ?? '')?.[0];
  const why = aadsts ?? (o.name === 'CredentialUnavailableError' || o.name === 'AggregateAuthenticationError' ? 'no credential was available' : 'refused');
  return `Microsoft Entra ID sign-in failed (${why}); sign in with az login, or set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (or AZURE_FEDERATED_TOKEN_FILE), or run where a managed identity is assigned`;
}

/** Socket-level failures: Azure (or the emulator) could not be reached at all. */
const NETWORK_CODES = new Set([
  'ECONNREFUSED', 'ENOTFOUND', 'ETIMEDOUT', 'ECONNRESET', 'EAI_AGAIN', 'EPIPE', 'EHOSTUNREACH',
  'ENETUNREACH', 'ENETDOWN', 'ECONNABORTED', 'ESOCKETTIMEDOUT', 'REQUEST_SEND_ERROR', 'UND_ERR_SOCKET',
]);

/** 403 codes that mean "valid credentials, missing permission" (SAS scope, RBAC). */
const PERMISSION_CODES = new Set([
  'AuthorizationPermissionMismatch', 'AuthorizationResourceTypeMismatch', 'AuthorizationServiceMismatch',
  'AuthorizationProtocolMismatch', 'AuthorizationSourceIPMismatch', 'InsufficientAccountPermissions',
]);

/** Lease conflicts (409 on lease operations, 412 on writes) are all busy. */
const LEASE_REASONS: Readonly<Record<string, string>> = {
  LeaseAlreadyPresent: 'the blob is leased by someone else',
  LeaseIdMissing: 'the blob is leased and the request carried no lease id',
  LeaseIdMismatchWithBlobOperation: 'the lease id does not match the blob\'s lease',
  LeaseIdMismatchWithLeaseOperation: 'the lease id does not match the blob\'s lease',
  LeaseNotPresentWithBlobOperation: 'the lease was lost (expired, released or broken)',
  LeaseNotPresentWithLeaseOperation: 'the blob has no lease',
  LeaseLost: 'the lease was lost (expired, released or broken)',
  LeaseIsBrokenAndCannotBeRenewed: 'the lease was broken',
  LeaseIsBreakingAndCannotBeAcquired: 'the lease is being broken',
  LeaseIsBreakingAndCannotBeChanged: 'the lease is being broken',
};

/** 409s that say the request does not fit the blob (wrong type, bad tier...). */
const INVALID_409_CODES = new Set(['InvalidBlobType', 'InvalidBlobTier', 'InvalidVersionForPageBlobOperation']);

interface Fields {
  status: number | undefined;
  code: string | undefined;
  name: string | undefined;
}

function fields(e: unknown): Fields {
  if (typeof e !== 'object' || e === null) return { status: undefined, code: undefined, name: undefined };
  const o = e as { statusCode?: unknown; code?: unknown; name?: unknown; details?: unknown };
  const details = (typeof o.details === 'object' && o.details !== null ? o.details : {}) as { errorCode?: unknown };
  // HEAD responses have no body: the service's code is then only in details.errorCode.
  const code = typeof o.code === 'string' ? o.code : typeof details.errorCode === 'string' ? details.errorCode : undefined;
  return {
    status: typeof o.statusCode === 'number' ? o.statusCode : undefined,
    code,
    name: typeof o.name === 'string' ? o.name : undefined,
  };
}

function oneLine(s: string): string {
  return s.replace(/[\r\n\t]+/g, ' ');
}

function target(ctx: ErrorContext): string {
  if (ctx.container !== undefined && ctx.blob !== undefined) return ` ${ctx.container}/${ctx.blob}`;
  if (ctx.container !== undefined) return ` ${ctx.container}`;
  return '';
}

function make(kind: ErrorKind, ctx: ErrorContext, reason: string, cause: unknown): BlobdiskError {
  return new BlobdiskError(kind, redact(oneLine(`${ctx.op}${target(ctx)} failed: ${reason}`)), { cause });
}

/** Status and service error code of the SDK error behind a BlobdiskError (or of an SDK error). */
export function azureCode(e: unknown): { status: number | undefined; code: string | undefined } {
  const { status, code } = fields(isBlobdiskError(e) ? e.cause : e);
  return { status, code };
}

/** Translates any failure of an SDK call into the BlobdiskError the store interface promises. */
export function toBlobdiskError(e: unknown, ctx: ErrorContext): BlobdiskError {
  if (isBlobdiskError(e)) return e;
  const { status, code, name } = fields(e);
  if (name !== undefined && SIGN_IN_ERRORS.has(name)) return make('denied', ctx, signInReason(e), e);
  const tag = `(${status ?? ''}${status !== undefined && code !== undefined ? ' ' : ''}${code ?? ''})`;

  if (status === undefined) {
    if (name === 'AbortError' || code === 'ABORT_ERR') {
      if (ctx.callerAborted) return make('unavailable', ctx, 'aborted', e);
      return make('unavailable', ctx, `Azure did not answer in time at ${ctx.host}`, e);
    }
    if (code !== undefined && NETWORK_CODES.has(code)) {
      return make('unavailable', ctx, `Azure is unreachable at ${ctx.host} (${code})`, e);
    }
    // Our own mistake inside the call (a bug) is not an outage; anything else without an
    // HTTP status failed on the way to Azure or back.
    if (e instanceof TypeError || e instanceof RangeError || e instanceof ReferenceError || e instanceof SyntaxError) {
      return make('failed', ctx, `unexpected error talking to Azure at ${ctx.host} (${name ?? 'error'})`, e);
    }
    return make('unavailable', ctx, `unexpected error talking to Azure at ${ctx.host}${code !== undefined ? ` (${code})` : ''}`, e);
  }

  if ((status === 409 || status === 412) && code !== undefined && code.startsWith('Lease')) {
    return make('busy', ctx, `${LEASE_REASONS[code] ?? 'lease conflict'} ${tag}`, e);
  }
  switch (status) {
    case 404:
      if (code === 'ContainerNotFound') return make('not-found', ctx, `container ${ctx.container ?? ''} does not exist ${tag}`, e);
      if (code === 'BlobNotFound') return make('not-found', ctx, `blob does not exist ${tag}`, e);
      return make('not-found', ctx, `not found ${tag}`, e);
    case 403:
      if (code !== undefined && PERMISSION_CODES.has(code)) {
        return make('denied', ctx, permissionReason(ctx, tag), e);
      }
      return make('denied', ctx, `Azure refused the credentials ${tag}; check the account key, SAS or connection string`, e);
    case 409:
      if (code === 'BlobAlreadyExists' || code === 'ContainerAlreadyExists') return make('exists', ctx, `already exists ${tag}`, e);
      if (code !== undefined && INVALID_409_CODES.has(code)) return make('invalid', ctx, `the request does not fit this blob ${tag}`, e);
      return make('busy', ctx, `conflicting state ${tag}`, e);
    case 412:
      if (ctx.createOnly) return make('exists', ctx, `already exists ${tag}`, e);
      return make('stale', ctx, `the blob changed (ETag mismatch) ${tag}`, e);
    case 416:
      return make('invalid', ctx, `the range is outside the blob ${tag}`, e);
    case 400:
    case 405:
    case 411:
    case 413:
    case 414:
      return make('invalid', ctx, `Azure rejected the request as invalid ${tag}`, e);
    default:
      if (status >= 500) return make('unavailable', ctx, `Azure at ${ctx.host} failed ${tag}`, e);
      return make('failed', ctx, `unexpected answer from Azure at ${ctx.host} ${tag}`, e);
  }
}
