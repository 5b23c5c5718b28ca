import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { Crc32, crc32 } from '../../lib/cache/crc';

// Grain maps written before hold zlib's CRC-32: whatever computes it now must agree.
describe('CRC-32 of grains', () => {
  const data = crypto.randomBytes(1024 * 1024 + 3);

  it('is the CRC-32 zlib computes, also continued from an earlier part', () => {
    expect(crc32(data)).toBe(zlib.crc32(data));
    expect(crc32(Buffer.alloc(0))).toBe(0);
    const head = data.subarray(0, 1000);
    expect(crc32(data.subarray(1000), crc32(head))).toBe(zlib.crc32(data));
  });

  it('comes out the same inline, in the worker thread for shared memory, and from a file', async () => {
    const crc = new Crc32();
    try {
      const shared = Buffer.from(new SharedArrayBuffer(data.length + 10)).subarray(5, 5 + data.length);
      data.copy(shared);
      expect(await crc.of(data)).toBe(zlib.crc32(data));
      expect(await crc.of(shared)).toBe(zlib.crc32(data));
      // A file shorter than the length asked for counts as zeros past its end.
      const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'blobdisk-crc-')), 'grain');
      fs.writeFileSync(file, data.subarray(0, 700_000));
      const padded = Buffer.concat([data.subarray(0, 700_000), Buffer.alloc(1024 * 1024 - 700_000)]);
      expect(await crc.ofFile(file, 1024 * 1024)).toBe(zlib.crc32(padded));
    } finally {
      await crc.close();
    }
  });
});
