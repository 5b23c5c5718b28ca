/* The safety net under every printed line: secrets in any of Azure's spellings are masked. */

import { randomBytes } from 'node:crypto';
import { redact } from '../../lib/redact';

const key = randomBytes(64).toString('base64'); // an account key: 88 characters

describe('redact', () => {
  test('AccountKey= in a connection string', () => {
    const cs = `DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=${key};EndpointSuffix=core.windows.net`;
    const out = redact(cs);
    expect(out).not.toContain(key);
    expect(out).toContain('AccountKey=***;');
    expect(out).toContain('AccountName=acct');
    expect(out).toContain('EndpointSuffix=core.windows.net');
    expect(redact(`accountkey=${key}`)).toBe('accountkey=***');
  });

  test('SharedAccessSignature= in a connection string', () => {
    const sas = 'sv=2024-08-04&ss=b&srt=sco&sp=rwdlac&se=2030-01-01T00:00:00Z&sig=abc%2Bdef%3D';
    const out = redact(`BlobEndpoint=https://acct.blob.core.windows.net/;SharedAccessSignature=${sas}`);
    expect(out).toBe('BlobEndpoint=https://acct.blob.core.windows.net/;SharedAccessSignature=***');
  });

  test('sig= in a SAS URL, wherever it stands in the query', () => {
    const url = 'https://acct.blob.core.windows.net/c/b.img?sv=2024-08-04&sig=Zm9vYmFy%2F%3D&sp=r';
    const out = redact(`GET ${url} failed`);
    expect(out).toBe('GET https://acct.blob.core.windows.net/c/b.img?sv=2024-08-04&sig=***&sp=r failed');
    expect(redact('x?sig=abc')).toBe('x?sig=***');
    expect(redact('"https://h/c?sp=r&SIG=abc"')).toBe('"https://h/c?sp=r&SIG=***"');
  });

  test('a SharedKey authorization header', () => {
    expect(redact(`authorization: SharedKey acct:${key.slice(0, 44)}`)).toBe('authorization: SharedKey acct:***');
  });

  test('a bare 88-character account key', () => {
    const out = redact(`the key ${key} was refused`);
    expect(out).toBe('the key *** was refused');
    // Unpadded and in JSON too.
    expect(redact(JSON.stringify({ k: key.replace(/=+$/, '') }))).toBe('{"k":"***"}');
  });

  test('ordinary text is left alone', () => {
    const line = 'read mycontainer/disks/vm-01.img failed: Azure is unreachable at acct.blob.core.windows.net (ETIMEDOUT)';
    expect(redact(line)).toBe(line);
    expect(redact('')).toBe('');
    const guid = 'lease 11111111-2222-3333-4444-555555555555 etag "0x8DC5A1B2C3D4E5F"';
    expect(redact(guid)).toBe(guid);
    const digest = `sha256 ${'ab'.repeat(32)} of ${'x'.repeat(120)}`;
    expect(redact(digest)).toBe(digest);
  });
});
