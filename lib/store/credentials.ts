/* How blobdisk reaches an account. Validated by lib/options.ts; consumed only by
 * lib/store/azure/. None of these values may ever be logged (see lib/redact.ts). */

export type Credentials =
  | { readonly kind: 'connectionString'; readonly connectionString: string }
  | { readonly kind: 'accountKey'; readonly account: string; readonly accountKey: string; readonly endpoint: string }
  | { readonly kind: 'sas'; readonly account: string; readonly sas: string; readonly endpoint: string };

export interface StoreOptions {
  readonly credentials: Credentials;
  /** Attempts per request, including the first (bounded so that an unreachable Azure fails with EIO). */
  readonly maxTries: number;
  /** Per-attempt timeout in milliseconds. */
  readonly tryTimeoutMs: number;
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
