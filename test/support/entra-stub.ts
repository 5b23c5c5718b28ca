/* A local stand-in for Microsoft Entra ID, for tests of sign-in that cannot reach the real
 * one: an HTTPS server (self-signed certificate made with openssl) that answers the OpenID
 * metadata and the client-credentials token request of a service principal, with a JWT whose
 * issuer, audience and lifetime are what Azure Storage (and Azurite's basic OAuth) check.
 * With AZURE_AUTHORITY_HOST pointing here, @azure/identity's DefaultAzureCredential signs in
 * through its environment credential exactly as against Entra ID. It can also play a blob
 * endpoint that answers every request with 403 AuthorizationPermissionMismatch, as Azure
 * does for an identity without a data role. */

import crypto from 'node:crypto';
import fsp from 'node:fs/promises';
import https from 'node:https';
import path from 'node:path';
import { sh } from './mount';

export interface TlsFiles {
  readonly cert: string;
  readonly key: string;
}

/** A self-signed certificate for 127.0.0.1, valid for a day. */
export async function selfSignedCert(dir: string): Promise<TlsFiles> {
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  const r = await sh('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1']);
  if (r.code !== 0) throw new Error(`openssl could not make a certificate: ${r.stderr}`);
  return { cert, key };
}

export interface EntraStub {
  /** https://127.0.0.1:PORT, for AZURE_AUTHORITY_HOST or as a blob endpoint. */
  readonly url: string;
  readonly tenant: string;
  readonly clientId: string;
  readonly clientSecret: string;
  /** Tokens issued so far. */
  tokens(): number;
  /** Blob requests refused with 403 so far (and whether each carried a bearer token). */
  refused(): { bearer: boolean }[];
  stop(): Promise<void>;
}

const b64url = (data: string | Buffer): string => Buffer.from(data).toString('base64url');

export async function startEntraStub(tls: TlsFiles): Promise<EntraStub> {
  const tenant = crypto.randomUUID();
  const clientId = crypto.randomUUID();
  const clientSecret = crypto.randomBytes(24).toString('base64url');
  let issued = 0;
  const refused: { bearer: boolean }[] = [];
  let url = '';
  const json = (res: import('node:http').ServerResponse, status: number, body: unknown): void => {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  };
  const server = https.createServer({ cert: await fsp.readFile(tls.cert), key: await fsp.readFile(tls.key) }, (req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (d: string) => (body += d));
    req.on('end', () => {
      const p = new URL(req.url ?? '/', url).pathname;
      if (p === `/${tenant}/v2.0/.well-known/openid-configuration`) {
        json(res, 200, {
          issuer: `${url}/${tenant}/v2.0`,
          authorization_endpoint: `${url}/${tenant}/oauth2/v2.0/authorize`,
          token_endpoint: `${url}/${tenant}/oauth2/v2.0/token`,
          end_session_endpoint: `${url}/${tenant}/oauth2/v2.0/logout`,
          jwks_uri: `${url}/${tenant}/discovery/v2.0/keys`,
          response_types_supported: ['code', 'id_token', 'token'],
          subject_types_supported: ['pairwise'],
          id_token_signing_alg_values_supported: ['RS256'],
        });
        return;
      }
      if (p === `/${tenant}/oauth2/v2.0/token` && req.method === 'POST') {
        const form = new URLSearchParams(body);
        if (form.get('client_id') !== clientId || form.get('client_secret') !== clientSecret) {
          json(res, 401, { error: 'invalid_client', error_description: 'AADSTS7000215: Invalid client secret provided.', error_codes: [7000215] });
          return;
        }
        issued++;
        const now = Math.floor(Date.now() / 1000);
        const claims = { aud: 'https://storage.azure.com', iss: `https://sts.windows.net/${tenant}/`, iat: now, nbf: now - 60, exp: now + 3600, tid: tenant, appid: clientId, oid: crypto.randomUUID() };
        // Azurite's basic OAuth checks issuer, audience and lifetime, not the signature.
        const token = `${b64url(JSON.stringify({ alg: 'RS256', typ: 'JWT' }))}.${b64url(JSON.stringify(claims))}.${b64url(crypto.randomBytes(64))}`;
        json(res, 200, { token_type: 'Bearer', expires_in: 3600, ext_expires_in: 3600, access_token: token });
        return;
      }
      // Anything else is a blob request: refused as Azure refuses an identity without a data role.
      refused.push({ bearer: /^Bearer /.test(req.headers.authorization ?? '') });
      res.writeHead(403, { 'content-type': 'application/xml', 'x-ms-error-code': 'AuthorizationPermissionMismatch' });
      res.end(req.method === 'HEAD' ? undefined : '<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthorizationPermissionMismatch</Code><Message>This request is not authorized to perform this operation using this permission.</Message></Error>');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('the Entra ID stub has no port');
  url = `https://127.0.0.1:${address.port}`;
  return {
    url,
    tenant,
    clientId,
    clientSecret,
    tokens: () => issued,
    refused: () => [...refused],
    stop: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** The environment of a service principal signing in through `stub` (what DefaultAzureCredential
 *  reads), trusting the stub's and Azurite's certificate. */
export function servicePrincipalEnv(stub: EntraStub, tls: TlsFiles, secret = stub.clientSecret): NodeJS.ProcessEnv {
  return {
    AZURE_TENANT_ID: stub.tenant,
    AZURE_CLIENT_ID: stub.clientId,
    AZURE_CLIENT_SECRET: secret,
    AZURE_AUTHORITY_HOST: stub.url,
    NODE_EXTRA_CA_CERTS: tls.cert,
    // Only the environment's service principal: never a managed-identity probe off this host.
    AZURE_TOKEN_CREDENTIALS: 'EnvironmentCredential',
  };
}
