import crypto from 'node:crypto';
import { silentLogger } from '../../lib/log';
import { Namespace } from '../../lib/namespace/namespace';
import { MemoryStore } from '../support/memory-store';
import { harness } from '../support/image-harness';

const ref = { container: 'c', name: 'grows.bin' };

async function putBlockBlob(store: MemoryStore, data: Buffer): Promise<void> {
  const id = Buffer.from(crypto.randomUUID()).toString('base64');
  await store.stageBlock(ref, id, data);
  await store.commitBlockList(ref, [id]);
}

describe('Namespace attributes', () => {
  it('an open that saw a new ETag is not undone by an older listing, even within the same second', async () => {
    const store = new MemoryStore({ containers: ['c'] });
    const h = harness(store);
    const ns = new Namespace(store, h.images, { container: 'c', attrTtlMs: 60_000, readOnly: false, pageBlobPatterns: [] }, silentLogger);
    try {
      // Start just past a second boundary so that both versions share one Last-Modified.
      await new Promise((r) => setTimeout(r, 1005 - (Date.now() % 1000)));
      await putBlockBlob(store, crypto.randomBytes(1000));
      expect((await ns.getattr('/grows.bin')).size).toBe(1000); // the listing is now cached for 60 s
      const first = await ns.open('/grows.bin');
      expect(first.size).toBe(1000);
      const lastModified = (await store.getInfo(ref)).lastModified.getTime();
      await putBlockBlob(store, crypto.randomBytes(3000));
      const second = await ns.open('/grows.bin'); // asks Azure: sees 3000 bytes
      expect(second.size).toBe(3000);
      const { size } = await ns.getattr('/grows.bin'); // the cached listing still says 1000
      const sameSecond = (await store.getInfo(ref)).lastModified.getTime() === lastModified;
      expect({ size, image: second.size }).toEqual({ size: 3000, image: 3000 });
      // The case that once failed needs both versions within one second of Last-Modified.
      expect(sameSecond).toBe(true);
    } finally {
      await h.close();
    }
  });

  it('a listing asked for after the image last heard of the blob shows a change made elsewhere', async () => {
    const store = new MemoryStore({ containers: ['c'] });
    const h = harness(store);
    const ns = new Namespace(store, h.images, { container: 'c', attrTtlMs: 0, readOnly: false, pageBlobPatterns: [] }, silentLogger);
    try {
      await putBlockBlob(store, crypto.randomBytes(1000));
      const image = await ns.open('/grows.bin');
      expect(image.size).toBe(1000);
      await new Promise((r) => setTimeout(r, 5));
      await putBlockBlob(store, crypto.randomBytes(2000));
      expect((await ns.getattr('/grows.bin')).size).toBe(2000); // TTL 0: listed again
      expect(image.size).toBe(2000);
    } finally {
      await h.close();
    }
  });
});
