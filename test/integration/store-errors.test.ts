/* AzureStore failures on a real Azurite: each becomes the promised errno with a one-line
 * message that names what went wrong and never carries a key, SAS or connection string. */

import { randomBytes } from 'node:crypto';
import * as net from 'node:net';
import { AccountSASPermissions, generateAccountSASQueryParameters, StorageSharedKeyCredential } from '@azure/storage-blob';
import { AZURITE_ACCOUNT, AZURITE_KEY } from '../../lib/azurite';
import { isBlobdiskError, type BlobdiskError, type ErrorKind } from '../../lib/errors';
import { AzureStore } from '../../lib/store/azure';
import type { Credentials } from '../../lib/store/credentials';
import { startTestAzurite, type TestAzurite } from '../support/azurite';

async function failure(p: Promise<unknown> | (() => unknown), code: ErrorKind): Promise<BlobdiskError> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    if (!isBlobdiskError(e)) throw new Error(`expected BlobdiskError ${code}, got ${String(e)}`);
    expect(e.kind).toBe(code);
    expect(e.message).not.toMatch(/[\r\n]/);
    return e;
  }
  throw new Error(`expected ${code}, but it succeeded`);
}

function storeWith(credentials: Credentials, maxTries = 2, tryTimeoutMs = 2000): AzureStore {
  return new AzureStore({ credentials, maxTries, tryTimeoutMs });
}

/** A port on 127.0.0.1 that nothing listens on. */
async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((done) => server.close(() => done()));
  return port;
}

describe('AzureStore errors on Azurite', () => {
  let az: TestAzurite;
  const C = 'errors';

  beforeAll(async () => {
    az = await startTestAzurite();
    await az.store.createContainer(C);
    await az.store.createPageBlob({ container: C, name: 'exists.img' }, 4096);
  });
  afterAll(() => az.stop());

  test('a wrong account key is EACCES and the message does not contain the key', async () => {
    const key = randomBytes(64).toString('base64');
    const store = storeWith({ kind: 'accountKey', account: AZURITE_ACCOUNT, accountKey: key, endpoint: az.azurite.endpoint });
    const e = await failure(store.listContainers(), 'denied');
    expect(e.message).toMatch(/credentials/);
    expect(e.message).toMatch(/403/);
    expect(e.message).not.toContain(key);
    // HEAD requests (no error body) too.
    const e2 = await failure(store.getInfo({ container: C, name: 'exists.img' }), 'denied');
    expect(e2.message).not.toContain(key);
    // And through a connection string.
    const cs = az.azurite.connectionString.replace(AZURITE_KEY, key);
    const e3 = await failure(storeWith({ kind: 'connectionString', connectionString: cs }).checkContainer(C), 'denied');
    expect(e3.message).not.toContain(key);
  });

  test('an unknown container or blob is ENOENT naming it', async () => {
    const e = await failure(az.store.checkContainer('no-such-container'), 'not-found');
    expect(e.message).toContain('no-such-container');
    const e2 = await failure(az.store.listDirectory('no-such-container', ''), 'not-found');
    expect(e2.message).toContain('no-such-container');
    const e3 = await failure(az.store.getInfo({ container: C, name: 'dir/missing.img' }), 'not-found');
    expect(e3.message).toContain('errors/dir/missing.img');
  });

  test('an unreachable endpoint is unavailable (EIO at the mount) within a bounded time, naming only the host', async () => {
    const port = await closedPort();
    const store = storeWith({ kind: 'accountKey', account: AZURITE_ACCOUNT, accountKey: AZURITE_KEY, endpoint: `http://127.0.0.1:${port}/${AZURITE_ACCOUNT}` });
    const t0 = Date.now();
    const e = await failure(store.getInfo({ container: C, name: 'x.img' }), 'unavailable');
    expect(Date.now() - t0).toBeLessThan(10_000);
    expect(e.message).toContain(`unreachable at 127.0.0.1:${port}`);
    expect(e.message).not.toContain(AZURITE_ACCOUNT);
  });

  test('an endpoint that accepts connections but never answers is unavailable after the deadline', async () => {
    const sockets: net.Socket[] = [];
    const server = net.createServer((s) => sockets.push(s));
    await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
    const { port } = server.address() as net.AddressInfo;
    try {
      const store = storeWith({ kind: 'accountKey', account: AZURITE_ACCOUNT, accountKey: AZURITE_KEY, endpoint: `http://127.0.0.1:${port}/${AZURITE_ACCOUNT}` }, 2, 500);
      const t0 = Date.now();
      const e = await failure(store.getInfo({ container: C, name: 'x.img' }), 'unavailable');
      expect(Date.now() - t0).toBeLessThan(10_000);
      expect(e.message).toContain(`127.0.0.1:${port}`);
    } finally {
      for (const s of sockets) s.destroy();
      await new Promise<void>((done) => server.close(() => done()));
    }
  });

  test('a malformed connection string is EINVAL and never echoed', () => {
    const secret = randomBytes(64).toString('base64');
    const cases = [
      'this is not a connection string',
      `AccountName=${AZURITE_ACCOUNT};AccountKey=`,
      `AccountKey=${secret};BlobEndpoint=http://127.0.0.1:1/x`,
      `AccountName=${AZURITE_ACCOUNT};AccountKey=${secret}!!;BlobEndpoint=http://127.0.0.1:1/x`,
      `AccountName=${AZURITE_ACCOUNT};BlobEndpoint=http://127.0.0.1:1/x;Password=${secret}`,
      `AccountName=${AZURITE_ACCOUNT};AccountKey=${secret};BlobEndpoint=not a url ${secret}`,
      `BlobEndpoint=http://127.0.0.1:1/x;SharedAccessSignature=`,
    ];
    for (const connectionString of cases) {
      let caught: unknown;
      try {
        storeWith({ kind: 'connectionString', connectionString });
      } catch (e) {
        caught = e;
      }
      expect(isBlobdiskError(caught) && caught.kind).toBe('invalid');
      const message = (caught as Error).message;
      expect(message).toMatch(/^the connection string is malformed: /);
      expect(message).not.toContain(secret);
      expect(message).not.toContain(connectionString);
    }
  });

  describe('with a SAS', () => {
    function accountSas(permissions: string): string {
      return generateAccountSASQueryParameters(
        {
          permissions: AccountSASPermissions.parse(permissions),
          services: 'b',
          resourceTypes: 'sco',
          startsOn: new Date(Date.now() - 60_000),
          expiresOn: new Date(Date.now() + 3600_000),
        },
        new StorageSharedKeyCredential(AZURITE_ACCOUNT, AZURITE_KEY),
      ).toString();
    }

    test('works for reads, writes and copies', async () => {
      const sas = accountSas('rwdlacup');
      const store = storeWith({ kind: 'sas', account: AZURITE_ACCOUNT, sas, endpoint: az.azurite.endpoint });
      await store.createContainer('sas-works');
      const ref = { container: 'sas-works', name: 'a.img' };
      await store.createPageBlob(ref, 1024 * 1024);
      await store.putPages(ref, 0, Buffer.alloc(4096, 9));
      const parts: Buffer[] = [];
      for await (const p of await store.read(ref, 0, 4096)) parts.push(p);
      expect(Buffer.concat(parts).equals(Buffer.alloc(4096, 9))).toBe(true);
      await store.copyBlob(ref, { container: 'sas-works', name: 'b.img' });
      expect(await store.pageRanges({ container: 'sas-works', name: 'b.img' }, 0, 1024 * 1024)).toEqual([{ start: 0, end: 4096 }]);
      // The same SAS through a connection string.
      const cs = `BlobEndpoint=${az.azurite.endpoint};SharedAccessSignature=${sas}`;
      expect(await storeWith({ kind: 'connectionString', connectionString: cs }).listContainers()).toContain('sas-works');
    });

    test('its errors never show the signature', async () => {
      const sas = accountSas('rwdlacup');
      const store = storeWith({ kind: 'sas', account: AZURITE_ACCOUNT, sas, endpoint: az.azurite.endpoint });
      const e = await failure(store.getInfo({ container: C, name: 'missing.img' }), 'not-found');
      expect(e.message).not.toContain('sig=');

      const readOnly = storeWith({ kind: 'sas', account: AZURITE_ACCOUNT, sas: accountSas('rl'), endpoint: az.azurite.endpoint });
      const e2 = await failure(readOnly.putPages({ container: C, name: 'exists.img' }, 0, Buffer.alloc(512)), 'denied');
      expect(e2.message).not.toContain('sig=');

      const forged = sas.replace(/sig=[^&]+/, `sig=${encodeURIComponent(randomBytes(32).toString('base64'))}`);
      const bad = storeWith({ kind: 'sas', account: AZURITE_ACCOUNT, sas: forged, endpoint: az.azurite.endpoint });
      const e3 = await failure(bad.listContainers(), 'denied');
      expect(e3.message).not.toContain('sig=');
      expect(e3.message).not.toContain(forged);
    });
  });
});
