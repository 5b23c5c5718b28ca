/* End to end: the write path through a real FUSE mount on a real Azurite. Real tools (dd,
 * cp, truncate, mkdir) write into page blobs and block blobs, some uploaded beforehand by
 * the SDK with layouts of "another tool" (sparse pages, 4 MiB + 9 MiB blocks). Every write
 * is read back at once through the mount; then the mount drains on SIGTERM, and a direct
 * SDK download must hold exactly the bytes built locally from the same writes; a cold
 * mount (empty cache dir) must read the same. --sync cloud is checked while still mounted.
 * Needs root, /dev/fuse and libfuse3. */

import type { ContainerClient } from '@azure/storage-blob';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { startAzurite, type RunningAzurite } from '../../lib/azurite';
import {
  randomData,
  removeTempDirs,
  sh,
  statOf,
  stopAllMounts,
  uploadBlockBlob,
  uploadPageBlob,
  type RunningMount,
} from '../support/mount';
import {
  GiB,
  KiB,
  MiB,
  containerOn,
  ddWrite,
  expectBytes,
  flushCli,
  freshCacheDir,
  imageStatus,
  mountOn,
  ok,
  patched,
  readAll,
  readRange,
  resized,
  scratchFile,
  sdkDownload,
  sdkPageBytes,
  sdkProperties,
  unmountClean,
} from '../support/write-helpers';

const CONTAINER = 'writes';

let azurite: RunningAzurite;
let container: ContainerClient;

/** What each blob must hold in Azure once the first mount has drained: built locally from
 *  the same bytes the tests wrote through the mount. */
const expected = new Map<string, Buffer>();
/** Blob type each name must have in Azure. */
const kinds = new Map<string, 'PageBlob' | 'BlockBlob'>();

/* Blobs "another tool" made, uploaded before the mounts start (a mount trusts a directory
 * listing for a few seconds, so blobs appearing behind its back later may not show at once). */
const PAGE_BASE = { name: 'vm/base.img', size: 16 * MiB, ranges: [0, 9, 12].map((m) => ({ offset: m * MiB, data: randomData(m === 0 ? 2 * MiB : MiB) })) };
const FOREIGN_BLOCKS = [randomData(4 * MiB), randomData(9 * MiB), randomData(1000)];
const PAGE_SHRINK = randomData(8 * MiB);
const BLOCK_SHRINK_BLOCKS = [randomData(4 * MiB), randomData(9 * MiB)];
const CLOUD_BASE = randomData(8 * MiB);

beforeAll(async () => {
  azurite = await startAzurite({ inMemory: true });
  container = await containerOn(azurite.connectionString, CONTAINER);
  await uploadPageBlob(container, PAGE_BASE.name, PAGE_BASE.size, PAGE_BASE.ranges);
  await uploadBlockBlob(container, 'blocks/foreign.bin', FOREIGN_BLOCKS);
  await uploadPageBlob(container, 'vm/shrink.img', PAGE_SHRINK.length, [{ offset: 0, data: PAGE_SHRINK }]);
  await uploadBlockBlob(container, 'blocks/shrink.bin', BLOCK_SHRINK_BLOCKS);
  await uploadPageBlob(container, 'cloud/base.img', CLOUD_BASE.length, [{ offset: 0, data: CLOUD_BASE }]);
});

afterAll(async () => {
  await stopAllMounts();
  await azurite?.stop();
  await removeTempDirs();
});

describe('writes through one mount, checked in Azure after it drained', () => {
  let mount: RunningMount;
  const at = (rel: string): string => path.join(mount.mnt, rel);

  beforeAll(async () => {
    mount = await mountOn(azurite.connectionString, CONTAINER, await freshCacheDir(), ['--grain-size', '1M']);
  });

  /** Reads the whole file back through the mount and compares it with `want`. */
  async function expectHot(rel: string, want: Buffer): Promise<void> {
    expect(await statOf(at(rel), '%s')).toBe(String(want.length));
    expectBytes(await readAll(at(rel)), want, `${rel} read back through the mount`);
  }

  test('dd conv=notrunc into an SDK page blob: unaligned, across grains, into empty and written pages, a grain of zeros', async () => {
    const { name, size, ranges } = PAGE_BASE;
    let want: Buffer = Buffer.alloc(size);
    for (const r of ranges) want = patched(want, r.offset, r.data);

    const writes = [
      { offset: MiB - 700, data: randomData(5000) }, // unaligned, across the grain 0/1 boundary
      { offset: 5 * MiB + 3, data: randomData(MiB + 11) }, // into pages Azure never had
      { offset: 9 * MiB + 512 * KiB + 1, data: randomData(4 * KiB) }, // into an uncached written grain
      { offset: 12 * MiB, data: Buffer.alloc(MiB) }, // a whole grain of zeros over written pages
      { offset: size - 512, data: randomData(512) }, // the last sector
    ];
    for (const w of writes) {
      const r = await ddWrite(at(name), w.offset, w.data);
      expect({ offset: w.offset, code: r.code, stderr: r.stderr }).toEqual({ offset: w.offset, code: 0, stderr: '' });
      want = patched(want, w.offset, w.data);
      // Read back at once: the written range with a margin on both sides.
      const from = Math.max(0, w.offset - 1000);
      const to = Math.min(size, w.offset + w.data.length + 1000);
      expectBytes(await readRange(at(name), from, to - from), want.subarray(from, to), `${name} [${from}, ${to}) right after the write`);
    }
    await expectHot(name, want);
    expected.set(name, want);
    kinds.set(name, 'PageBlob');

    // After a flush Azure holds the bytes, and the zero grain is no page range (Clear Pages).
    ok(await flushCli(mount, at(name)), `blobdisk flush ${name}`);
    expectBytes(await sdkDownload(container, name), want, `${name} in Azure after blobdisk flush`);
    let zeroGrainPages = 0;
    for await (const page of container.getPageBlobClient(name).listPageRanges(12 * MiB, MiB).byPage()) {
      for (const r of page.pageRange ?? []) zeroGrainPages += Math.max(0, Math.min(r.end + 1, 13 * MiB) - Math.max(r.start, 12 * MiB));
    }
    expect(zeroGrainPages).toBe(0);
    const image = await imageStatus(mount, name);
    expect(image.kind).toBe('page');
    expect(image.dirtyBytes).toBe(0);
    // Only the dirty runs went up, never whole grains around a 4 KiB write nor the zeros.
    const dirtied = writes.filter((w) => w.data.some((b) => b !== 0)).reduce((n, w) => n + w.data.length, 0);
    expect(image.bytesUp).toBeGreaterThanOrEqual(dirtied);
    expect(image.bytesUp).toBeLessThan(dirtied + 64 * KiB);
  });

  test('dd conv=notrunc into an SDK block blob of 4 MiB + 9 MiB + odd blocks, also growing it', async () => {
    const name = 'blocks/foreign.bin';
    let want: Buffer = Buffer.concat(FOREIGN_BLOCKS);
    const writes = [
      { offset: 4 * MiB - 100, data: randomData(300) }, // across the 4 MiB / 9 MiB block boundary
      { offset: 6 * MiB + 12345, data: randomData(2 * MiB) }, // inside the 9 MiB block, across grains
      { offset: 0, data: randomData(10) },
      { offset: 13 * MiB + 1000 - 5, data: randomData(MiB + 5) }, // over the end: the file grows
    ];
    for (const w of writes) {
      const r = await ddWrite(at(name), w.offset, w.data);
      expect({ offset: w.offset, code: r.code, stderr: r.stderr }).toEqual({ offset: w.offset, code: 0, stderr: '' });
      want = patched(want, w.offset, w.data);
      const from = Math.max(0, w.offset - 1000);
      const to = Math.min(want.length, w.offset + w.data.length + 1000);
      expectBytes(await readRange(at(name), from, to - from), want.subarray(from, to), `${name} [${from}, ${to}) right after the write`);
    }
    await expectHot(name, want);
    expect((await imageStatus(mount, name)).kind).toBe('block');
    expected.set(name, want);
    kinds.set(name, 'BlockBlob');
  });

  test('cp of local files creates a page blob (*.raw, unaligned size) and a block blob', async () => {
    ok(await sh('mkdir', [at('copies')]), 'mkdir copies');
    const raw = randomData(5 * MiB + 123);
    const dat = randomData(3 * MiB + 7);
    for (const [name, data] of [['copies/disk.raw', raw], ['copies/notes.dat', dat]] as const) {
      const src = await scratchFile(path.basename(name));
      await fsp.writeFile(src, data);
      const r = await sh('cp', [src, at(name)]);
      expect({ name, code: r.code, stderr: r.stderr }).toEqual({ name, code: 0, stderr: '' });
      const cmp = await sh('cmp', [src, at(name)]);
      expect({ name, cmp: cmp.code, out: cmp.stdout + cmp.stderr }).toEqual({ name, cmp: 0, out: '' });
      expected.set(name, data);
    }
    kinds.set('copies/disk.raw', 'PageBlob');
    kinds.set('copies/notes.dat', 'BlockBlob');
    expect((await imageStatus(mount, 'copies/disk.raw')).kind).toBe('page');
    expect((await imageStatus(mount, 'copies/notes.dat')).kind).toBe('block');
    // The directory is a marker blob in Azure.
    expect((await sdkProperties(container, 'copies')).metadata.hdi_isfolder).toBe('true');
  });

  test('truncate -s 20G vms/disk.img: a 20 GiB sparse page blob, no data uploaded', async () => {
    const name = 'vms/disk.img';
    ok(await sh('mkdir', [at('vms')]), 'mkdir vms');
    const r = await sh('truncate', ['-s', '20G', at(name)]);
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
    expect(await statOf(at(name), '%s,%b')).toBe(`${20 * GiB},0`);
    ok(await flushCli(mount, at(name)), `blobdisk flush ${name}`);
    const image = await imageStatus(mount, name);
    expect({ kind: image.kind, size: image.size, bytesUp: image.bytesUp, dirty: image.dirtyBytes }).toEqual({ kind: 'page', size: 20 * GiB, bytesUp: 0, dirty: 0 });
    const props = await sdkProperties(container, name);
    expect({ type: props.type, size: props.size }).toEqual({ type: 'PageBlob', size: 20 * GiB });
    expect(await sdkPageBytes(container, name)).toBe(0);
    // Reading anywhere gives zeros, without fetching anything.
    expectBytes(await readRange(at(name), 10 * GiB - 4096, 8192), Buffer.alloc(8192), `${name} in the middle`);
    expect((await imageStatus(mount, name)).bytesDown).toBe(0);
  });

  test('truncate shrinks and grows an SDK page blob; the regrown part reads zeros, also inside the cut sector', async () => {
    const name = 'vm/shrink.img';
    const original = PAGE_SHRINK;
    const cut = 3 * MiB + 100;

    ok(await sh('truncate', ['-s', String(cut), at(name)]), 'truncate (shrink)');
    await expectHot(name, original.subarray(0, cut));
    ok(await flushCli(mount, at(name)), `blobdisk flush ${name}`);
    const shrunk = await sdkProperties(container, name);
    expect({ size: shrunk.size, logical: shrunk.metadata.blobdisk_size }).toEqual({ size: 3 * MiB + 512, logical: String(cut) });

    ok(await sh('truncate', ['-s', String(8 * MiB), at(name)]), 'truncate (grow)');
    const want = resized(original.subarray(0, cut), 8 * MiB);
    await expectHot(name, want);
    expectBytes(await readRange(at(name), cut - 50, 1000), want.subarray(cut - 50, cut + 950), `${name} around the cut`);
    expected.set(name, want);
    kinds.set(name, 'PageBlob');
  });

  test('truncate shrinks and grows an SDK block blob; the regrown part reads zeros', async () => {
    const name = 'blocks/shrink.bin';
    const original = Buffer.concat(BLOCK_SHRINK_BLOCKS);
    const cut = 5 * MiB + 77;

    ok(await sh('truncate', ['-s', String(cut), at(name)]), 'truncate (shrink)');
    await expectHot(name, original.subarray(0, cut));
    ok(await flushCli(mount, at(name)), `blobdisk flush ${name}`);
    expectBytes(await sdkDownload(container, name), original.subarray(0, cut), `${name} in Azure after the shrink`);

    ok(await sh('truncate', ['-s', String(7 * MiB), at(name)]), 'truncate (grow)');
    const want = resized(original.subarray(0, cut), 7 * MiB);
    await expectHot(name, want);
    expected.set(name, want);
    kinds.set(name, 'BlockBlob');
  });

  test('a page blob of 1000 bytes keeps its logical size in metadata', async () => {
    const name = 'vm/odd.img';
    const data = randomData(1000);
    const src = await scratchFile('odd');
    await fsp.writeFile(src, data);
    ok(await sh('cp', [src, at(name)]), 'cp odd.img');
    await expectHot(name, data);
    ok(await flushCli(mount, at(name)), `blobdisk flush ${name}`);
    const props = await sdkProperties(container, name);
    expect({ type: props.type, size: props.size, logical: props.metadata.blobdisk_size }).toEqual({ type: 'PageBlob', size: 1024, logical: '1000' });
    expected.set(name, data);
    kinds.set(name, 'PageBlob');
  });

  test('two writers at once into two images (a new page blob and a new block blob)', async () => {
    ok(await sh('mkdir', [at('par')]), 'mkdir par');
    const a = randomData(48 * MiB);
    const b = randomData(40 * MiB + 333);
    const srcA = await scratchFile('a');
    const srcB = await scratchFile('b');
    await fsp.writeFile(srcA, a);
    await fsp.writeFile(srcB, b);
    const [ra, rb] = await Promise.all([
      sh('dd', [`if=${srcA}`, `of=${at('par/a.img')}`, 'bs=1M', 'conv=fsync', 'status=none'], { timeoutMs: 180_000 }),
      sh('dd', [`if=${srcB}`, `of=${at('par/b.bin')}`, 'bs=256K', 'conv=fsync', 'status=none'], { timeoutMs: 180_000 }),
    ]);
    expect({ a: ra.code, ae: ra.stderr, b: rb.code, be: rb.stderr }).toEqual({ a: 0, ae: '', b: 0, be: '' });
    const [ha, hb] = await Promise.all([readAll(at('par/a.img')), readAll(at('par/b.bin'))]);
    expectBytes(ha, a, 'par/a.img read back');
    expectBytes(hb, b, 'par/b.bin read back');
    expected.set('par/a.img', a);
    expected.set('par/b.bin', b);
    kinds.set('par/a.img', 'PageBlob');
    kinds.set('par/b.bin', 'BlockBlob');
  });

  test('unmount drains everything: SDK downloads equal the bytes written', async () => {
    await unmountClean(mount);
    expect(expected.size).toBeGreaterThan(0);
    for (const [name, want] of expected) {
      const props = await sdkProperties(container, name);
      expect({ name, type: props.type }).toEqual({ name, type: kinds.get(name) });
      const got = await sdkDownload(container, name);
      if (props.type === 'PageBlob' && want.length % 512 !== 0) {
        // Azure holds whole pages; the logical size is in the metadata, the tail is zeros.
        expect({ name, logical: props.metadata.blobdisk_size }).toEqual({ name, logical: String(want.length) });
        expectBytes(got, resized(want, Math.ceil(want.length / 512) * 512), `${name} in Azure`);
      } else {
        expectBytes(got, want, `${name} in Azure`);
      }
    }
    // A block blob keeps within Azure's block limits.
    const blocks = await container.getBlockBlobClient('blocks/foreign.bin').getBlockList('committed');
    expect((blocks.committedBlocks ?? []).length).toBeLessThanOrEqual(50_000);
    expect((blocks.uncommittedBlocks ?? []).length).toBe(0);
    expect((await sdkProperties(container, 'vms/disk.img')).size).toBe(20 * GiB);
  });

  test('a cold mount (empty cache dir) reads the same bytes and sizes', async () => {
    const cold = await mountOn(azurite.connectionString, CONTAINER, await freshCacheDir());
    try {
      for (const [name, want] of expected) {
        expect({ name, size: await statOf(path.join(cold.mnt, name), '%s') }).toEqual({ name, size: String(want.length) });
        expectBytes(await readAll(path.join(cold.mnt, name)), want, `${name} through a cold mount`);
      }
      expect(await statOf(path.join(cold.mnt, 'vms/disk.img'), '%s')).toBe(String(20 * GiB));
      expect(await statOf(path.join(cold.mnt, 'vm/odd.img'), '%s')).toBe('1000');
    } finally {
      await unmountClean(cold);
    }
  });
});

describe('--sync cloud and --page-blob-pattern', () => {
  let mount: RunningMount;
  const at = (rel: string): string => path.join(mount.mnt, rel);

  beforeAll(async () => {
    mount = await mountOn(azurite.connectionString, CONTAINER, await freshCacheDir(), ['--sync', 'cloud', '--page-blob-pattern', '*.disk', '--page-blob-pattern', '*.img']);
  });
  afterAll(async () => {
    await mount?.stop();
  });

  test('once dd conv=fsync returns, the data is in Azure (page blob and new block blob), while still mounted', async () => {
    const name = 'cloud/base.img';
    const original = CLOUD_BASE;
    const data = randomData(2 * MiB + 4096);
    const r = await ddWrite(at(name), 3 * MiB - 4096, data, { conv: ['fsync'] });
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
    expectBytes(await sdkDownload(container, name), patched(original, 3 * MiB - 4096, data), `${name} in Azure right after fsync`);
    expect((await imageStatus(mount, name)).dirtyBytes).toBe(0);

    const fresh = randomData(3 * MiB + 5);
    const src = await scratchFile('cloud');
    await fsp.writeFile(src, fresh);
    const w = await sh('dd', [`if=${src}`, `of=${at('cloud/new.bin')}`, 'bs=1M', 'conv=fsync', 'status=none']);
    expect({ code: w.code, stderr: w.stderr }).toEqual({ code: 0, stderr: '' });
    const props = await sdkProperties(container, 'cloud/new.bin');
    expect(props.type).toBe('BlockBlob');
    expectBytes(await sdkDownload(container, 'cloud/new.bin'), fresh, 'cloud/new.bin in Azure right after fsync');
  });

  test('new files matching a --page-blob-pattern are page blobs, others block blobs', async () => {
    const data = randomData(MiB);
    for (const name of ['cloud/x.disk', 'cloud/y.img', 'cloud/z.vmdk']) {
      const r = await ddWrite(at(name), 0, data, { conv: ['fsync'] });
      expect({ name, code: r.code, stderr: r.stderr }).toEqual({ name, code: 0, stderr: '' });
    }
    expect((await sdkProperties(container, 'cloud/x.disk')).type).toBe('PageBlob');
    expect((await sdkProperties(container, 'cloud/y.img')).type).toBe('PageBlob');
    // Not among the patterns given, so a block blob although it is a default pattern.
    expect((await sdkProperties(container, 'cloud/z.vmdk')).type).toBe('BlockBlob');
    expectBytes(await sdkDownload(container, 'cloud/x.disk'), data, 'cloud/x.disk in Azure');
    await unmountClean(mount);
  });
});
