/* Turning credentials into the endpoint URL and the SDK credential. A connection string is
 * parsed here, not by the SDK, so that a malformed one is refused with a message that
 * never echoes it (it holds the key or the SAS). */

import { AnonymousCredential, StorageSharedKeyCredential } from '@azure/storage-blob';
import { BlobdiskError } from '../../errors';
import type { TokenCredential } from '@azure/identity';
import type { Credentials } from '../credentials';

/** The emulator's well-known account (public, documented by Microsoft). */
export const DEVSTORE_ACCOUNT = 'devstoreaccount1';
export const DEVSTORE_KEY = 'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==';

export interface Resolved {
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
    throw new BlobdiskError('invalid', 'AZURE_AUTHORITY_HOST is not a URL; give e.g. https://login.microsoftonline.com');
  }
  return new DefaultAzureCredential(custom ? { disableInstanceDiscovery: true } : {});
}

function malformed(what: string): BlobdiskError {
  return new BlobdiskError('invalid', `the connection string is malformed: ${what}`);
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

export function resolve(credentials: Credentials): Resolved {
  const invalid: Fail = (why) => new BlobdiskError('invalid', why);
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
