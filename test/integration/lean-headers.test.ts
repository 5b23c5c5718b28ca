/* Put Page sends only the headers Azure reads: the request of a 4 KiB write carried 628
 * bytes of headers before (a seventh of what a guest's scattered writes send), and Azurite,
 * which checks Shared Key signatures, still accepts it. The bytes are taken off the wire by
 * a TCP tap between the store and a real Azurite. */

import net from 'node:net';
import { AzureStore } from '../../lib/store/azure';
import { leanUserAgent } from '../../lib/store/azure/lean-headers';
import { startTestAzurite, type TestAzurite } from '../support/azurite';

const ref = { container: 'lean', name: 'disk.img' };
let az: TestAzurite;
let tap: net.Server;
/** Everything the store sent through the tap. */
let sent = Buffer.alloc(0);

beforeAll(async () => {
  az = await startTestAzurite();
  tap = net.createServer((client) => {
    const up = net.connect(az.azurite.port, '127.0.0.1');
    client.on('data', (d: Buffer) => {
      sent = Buffer.concat([sent, d]);
      up.write(d);
    });
    up.pipe(client);
    client.on('error', () => up.destroy());
    up.on('error', () => client.destroy());
    client.on('close', () => up.destroy());
  });
  await new Promise<void>((resolve) => tap.listen(0, '127.0.0.1', resolve));
  await az.store.createContainer(ref.container);
  await az.store.createPageBlob(ref, 1024 * 1024);
});

afterAll(async () => {
  await new Promise((resolve) => tap?.close(resolve));
  await az?.stop();
});

test('the User-Agent keeps blobdisk and the storage SDK, nothing else', () => {
  expect(leanUserAgent('blobdisk azsdk-js-azure-storage-blob/12.32.0 core-rest-pipeline/1.24.0 Node/20.20.2 (Linux 6.1.0; x64)')).toBe(
    'blobdisk azsdk-js-azure-storage-blob/12.32.0',
  );
  expect(leanUserAgent('curl/8.0')).toBe('curl/8.0');
});

test('a Put Page of 4 KiB goes out without Accept or Content-Type, signed, in under 520 bytes of headers', async () => {
  const port = (tap.address() as net.AddressInfo).port;
  const connectionString = az.azurite.connectionString.replace(`127.0.0.1:${az.azurite.port}`, `127.0.0.1:${port}`);
  const store = new AzureStore({ ...az.storeOptions, credentials: { kind: 'connectionString', connectionString } });
  try {
    sent = Buffer.alloc(0);
    const data = Buffer.alloc(4096, 0x5a);
    await store.putPages(ref, 8192, data);
    const text = sent.toString('latin1');
    const start = text.indexOf('PUT ');
    const head = text.slice(start, text.indexOf('\r\n\r\n', start) + 4);
    console.log(`Put Page of 4 KiB: ${head.length} bytes of headers`);
    expect(head).toMatch(/comp=page/);
    const names = head.split('\r\n').slice(1).map((line) => line.split(':')[0]?.toLowerCase());
    expect(names).not.toContain('accept');
    expect(names).not.toContain('content-type');
    expect(head).toMatch(/\r\nuser-agent: blobdisk azsdk-js-azure-storage-blob\/[\d.]+\r\n/i);
    expect(head.length).toBeLessThan(520);
    // Azurite checked the signature; the page is there.
    const back: Buffer[] = [];
    for await (const chunk of await az.store.read(ref, 8192, 4096)) back.push(chunk);
    expect(Buffer.concat(back).equals(data)).toBe(true);
  } finally {
    await store.close();
  }
});
