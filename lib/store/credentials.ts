/* How blobdisk reaches an account. Validated by lib/options.ts; consumed only by
 * lib/store/azure.ts. None of these values may ever be logged (see lib/redact.ts). */

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
