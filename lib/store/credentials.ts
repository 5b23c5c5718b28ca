/* How blobdisk reaches an account. Validated by lib/options.ts; consumed only by
 * lib/store/azure/. None of these values may ever be logged (see lib/redact.ts). */

import type { Credentials } from '../config';

export type { Credentials };

export interface StoreOptions {
  readonly credentials: Credentials;
  /** Attempts per request, including the first (bounded so that an unreachable Azure fails with EIO). */
  readonly maxTries: number;
  /** Per-attempt timeout in milliseconds. */
  readonly tryTimeoutMs: number;
  /** Bound on one request, all tries and retry delays included (--io-timeout); by default
   *  as long as every try could take. */
  readonly deadlineMs?: number;
}

/** The public endpoint for an account name. */
export function defaultEndpoint(account: string): string {
  return `https://${account}.blob.core.windows.net`;
}

/** The account's name, used to tell apart blobs of different accounts sharing one cache directory. */
export function accountOf(credentials: Credentials): string {
  if (credentials.kind !== 'connectionString') return credentials.account;
  const name = /(?:^|;)\s*AccountName=([^;]+)/i.exec(credentials.connectionString)?.[1];
  if (name) return name.trim();
  const endpoint = /(?:^|;)\s*BlobEndpoint=([^;]+)/i.exec(credentials.connectionString)?.[1];
  if (endpoint) {
    try {
      const url = new URL(endpoint.trim());
      return url.host + url.pathname.replace(/\/+$/, '');
    } catch {
      // Malformed; the store reports it when it parses the connection string.
    }
  }
  return 'unknown';
}

const SAS_PERMISSIONS: Readonly<Record<string, string>> = { r: 'Read', w: 'Write', l: 'List', d: 'Delete', c: 'Create', a: 'Add' };

/** What a SAS token lacks for a mount, read from the token itself (sp, ss, srt), or
 *  undefined when it has what is needed (or says nothing, as a stored access policy's does). */
export function sasProblem(sas: string, readOnly: boolean): string | undefined {
  const q = new URLSearchParams(sas.replace(/^\?/, ''));
  const ss = q.get('ss');
  if (ss !== null && !ss.includes('b')) return `the SAS token is not for the Blob service (ss=${ss}); make one that includes b`;
  const srt = q.get('srt');
  if (srt !== null && !srt.includes('o')) return `the SAS token does not cover blobs (srt=${srt}); make one with srt=sco (or co with --container)`;
  const sp = q.get('sp');
  if (sp === null) return undefined;
  const needed = readOnly ? ['r', 'l'] : ['r', 'w', 'l'];
  const missing = needed.filter((p) => !sp.includes(p));
  if (missing.length === 0) return undefined;
  const names = missing.map((p) => SAS_PERMISSIONS[p] ?? p).join(' and ');
  return readOnly
    ? `the SAS token lacks the ${names} permission (sp=${sp}); a read-only mount needs at least sp=rl`
    : `the SAS token lacks the ${names} permission (sp=${sp}); a read-write mount needs at least sp=rwl (rwdlc to also delete and create), or mount with --read-only`;
}
