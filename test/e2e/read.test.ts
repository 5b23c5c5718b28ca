/* End to end: the read path through a real FUSE mount, driven by real tools run as child
 * processes (sha256sum, md5sum, cp, cmp, dd, stat, du, ls, qemu-img), each compared with
 * what a direct SDK download of the same blob gives. Needs root, /dev/fuse and libfuse3. */

import { BlobServiceClient, type ContainerClient } from '@azure/storage-blob';
import crypto from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { startAzurite, type RunningAzurite } from '../../lib/azurite';
import {
  ddRange,
  lines,
  makeTempDir,
  randomData,
  removeTempDirs,
  sdkRange,
  sdkSha256,
  sh,
  sha256,
  sha256OfFile,
  startMount,
  statOf,
  stopAllMounts,
  uploadBlockBlob,
  uploadFolderMarker,
  uploadPageBlob,
  type PageRangeData,
  type RunningMount,
} from '../support/mount';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

/** The sparse page blob: 1 GiB with four written ranges, two of them crossing a grain boundary. */
const SPARSE_NAME = 'vm/sparse.img';
const SPARSE_SIZE = 1 * GiB;
const SPARSE_RANGES: PageRangeData[] = [
  { offset: 0, data: randomData(64 * KiB) },
  { offset: 100 * MiB + 1536, data: randomData(MiB + 512) },
  { offset: 512 * MiB - 4 * KiB, data: randomData(8 * KiB) },
  { offset: GiB - MiB, data: randomData(MiB) },
];
const SPARSE_WRITTEN = SPARSE_RANGES.reduce((n, r) => n + r.data.length, 0);

/** Bytes [offset, offset + length) of the sparse image as it must read. */
function sparseBytes(offset: number, length: number): Buffer {
  const out = Buffer.alloc(length);
  for (const r of SPARSE_RANGES) {
    const from = Math.max(offset, r.offset);
    const to = Math.min(offset + length, r.offset + r.data.length);
    if (from < to) r.data.copy(out, from - offset, from - r.offset, to - r.offset);
  }
  return out;
}

/** A page blob whose logical size (metadata blobdisk_size) is not a multiple of 512. */
const ODD_NAME = 'odd.img';
const ODD_PHYSICAL = MiB;
const ODD_LOGICAL = MiB - 100;
const ODD_DATA = randomData(ODD_PHYSICAL);

/** Block blob staged by "another tool" with block sizes unrelated to the 1 MiB grain. */
const FOREIGN_NAME = 'blocks/foreign.bin';
const FOREIGN_BLOCKS = [4 * MiB, 9 * MiB, MiB + 7, 3, 2 * MiB - 5].map((n) => randomData(n));
const FOREIGN = Buffer.concat(FOREIGN_BLOCKS);

const DEEP_TEXT = 'deep inside a/b/c\n';
const HELLO_TEXT = 'hello from the other container\n';

let azurite: RunningAzurite;
let disks: ContainerClient;
let work: string;
let mount: RunningMount;

beforeAll(async () => {
  azurite = await startAzurite({ inMemory: true });
  const service = BlobServiceClient.fromConnectionString(azurite.connectionString);
  disks = service.getContainerClient('disks');
  await disks.create();
  const other = service.getContainerClient('other');
  await other.create();

  await uploadPageBlob(disks, SPARSE_NAME, SPARSE_SIZE, SPARSE_RANGES);
  await uploadPageBlob(disks, ODD_NAME, ODD_PHYSICAL, [{ offset: 0, data: ODD_DATA }], { blobdisk_size: String(ODD_LOGICAL) });
  await uploadPageBlob(disks, 'badsize.img', 4096, [{ offset: 0, data: randomData(4096) }], { blobdisk_size: 'not-a-number' });
  await uploadBlockBlob(disks, FOREIGN_NAME, FOREIGN_BLOCKS);
  await disks.getBlockBlobClient('a/b/c/deep.raw').upload(DEEP_TEXT, DEEP_TEXT.length);
  await disks.getBlockBlobClient('empty.txt').upload('', 0);
  await uploadFolderMarker(disks, 'empty-dir');
  await uploadFolderMarker(disks, 'a/b/emptier');
  await other.getBlockBlobClient('hello.txt').upload(HELLO_TEXT, HELLO_TEXT.length);

  work = await makeTempDir();
  mount = await startMount([
    '--connection-string', azurite.connectionString,
    '--container', 'disks',
    '--cache-dir', path.join(work, 'cache'),
    '--grain-size', '1M',
    '--log-level', 'warn',
  ]);
});

afterAll(async () => {
  await stopAllMounts();
  await azurite?.stop();
  await removeTempDirs();
});

const at = (rel: string): string => path.join(mount.mnt, rel);

describe('sparse 1 GiB page blob', () => {
  test('sha256sum through the mount equals the SDK download, with zeros served without requests', async () => {
    const expected = await sdkSha256(disks, SPARSE_NAME);
    expect(await sha256OfFile(at(SPARSE_NAME))).toBe(expected);

    const status = await mount.status();
    const image = status.images.find((i) => i.path === SPARSE_NAME);
    expect(image).toBeDefined();
    if (!image) return;
    expect(image.kind).toBe('page');
    expect(image.size).toBe(SPARSE_SIZE);
    // Every grain without pages read as zeros, with no GET.
    expect(image.counters.zeroReads).toBeGreaterThanOrEqual(SPARSE_SIZE / MiB - 2 * SPARSE_RANGES.length);
    expect(image.counters.bytesRead).toBeGreaterThanOrEqual(SPARSE_SIZE);
    // Only the written pages came over the wire, not the gigabyte.
    expect(image.counters.bytesDown).toBeGreaterThanOrEqual(SPARSE_WRITTEN);
    expect(image.counters.bytesDown).toBeLessThan(16 * MiB);
    expect(status.bytesDown).toBeLessThan(16 * MiB);
  });

  test('stat, du, ls -ls and ls -la show the logical size and the allocated pages', async () => {
    expect(await statOf(at(SPARSE_NAME), '%s,%b,%F')).toBe(`${SPARSE_SIZE},${SPARSE_WRITTEN / 512},regular file`);

    const du = await sh('du', ['-k', at(SPARSE_NAME)]);
    expect(du.code).toBe(0);
    const duKiB = Number(du.stdout.split(/\s/)[0]);
    expect(duKiB).toBe(Math.ceil(SPARSE_WRITTEN / KiB));

    const ls = await sh('ls', ['-ls', at('vm')]);
    expect(ls.code).toBe(0);
    const row = lines(ls.stdout).find((l) => l.endsWith(' sparse.img'));
    expect(row).toBeDefined();
    expect(Number(row?.trim().split(/\s+/)[0])).toBe(Math.ceil(SPARSE_WRITTEN / KiB));

    const la = await sh('ls', ['-la', at('vm')]);
    expect(la.code).toBe(0);
    const entry = lines(la.stdout).find((l) => l.endsWith(' sparse.img'));
    expect(entry).toMatch(new RegExp(`^-rw-r--r-- +1 +\\S+ +\\S+ +${SPARSE_SIZE} `));
  });

  test('qemu-img info reports a raw image of 1 GiB', async () => {
    const r = await sh('qemu-img', ['info', '--output=json', at(SPARSE_NAME)]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const info = JSON.parse(r.stdout) as { format: string; 'virtual-size': number; 'actual-size'?: number };
    expect(info.format).toBe('raw');
    expect(info['virtual-size']).toBe(SPARSE_SIZE);
    expect(info['actual-size']).toBe(SPARSE_WRITTEN);
  });

  test('cp to local disk gives an identical file (cmp) with the SDK hash', async () => {
    const copy = path.join(work, 'sparse-copy.img');
    const cp = await sh('cp', [at(SPARSE_NAME), copy], { timeoutMs: 180_000 });
    expect(cp.stderr).toBe('');
    expect(cp.code).toBe(0);
    const cmp = await sh('cmp', [at(SPARSE_NAME), copy], { timeoutMs: 180_000 });
    expect(cmp.stdout + cmp.stderr).toBe('');
    expect(cmp.code).toBe(0);
    expect(await sha256OfFile(copy)).toBe(await sdkSha256(disks, SPARSE_NAME));
    await fsp.rm(copy);
  });

  test('dd with skip reads a range across written and empty pages and a grain boundary', async () => {
    const ranges: [number, number][] = [
      [100 * MiB + 1536 - 10_000, MiB + 30_000], // zeros, data crossing grain 100/101, zeros
      [512 * MiB - 5000, 10_000], // around the 8 KiB range that crosses a grain boundary
      [300 * MiB + 17, 4096], // all zeros
      [GiB - 777, 777], // the tail of the image
    ];
    for (const [offset, length] of ranges) {
      const out = path.join(work, `dd-${offset}`);
      await ddRange(at(SPARSE_NAME), offset, length, out);
      const got = await fsp.readFile(out);
      expect(got.length).toBe(length);
      expect(sha256(got)).toBe(sha256(sparseBytes(offset, length)));
      expect(sha256(got)).toBe(sha256(await sdkRange(disks, SPARSE_NAME, offset, length)));
    }
    // dd with a block-count skip, as a user would type it.
    const out = path.join(work, 'dd-blocks');
    const r = await sh('dd', [`if=${at(SPARSE_NAME)}`, `of=${out}`, 'bs=4096', `skip=${(100 * MiB) / 4096}`, 'count=300', 'status=none']);
    expect(r.code).toBe(0);
    expect(sha256(await fsp.readFile(out))).toBe(sha256(sparseBytes(100 * MiB, 300 * 4096)));
  });
});

describe('page blob with a logical size that is not a multiple of 512', () => {
  test('stat reports the size from metadata blobdisk_size and reads stop there', async () => {
    expect(await statOf(at(ODD_NAME), '%s')).toBe(String(ODD_LOGICAL));
    expect(await sha256OfFile(at(ODD_NAME))).toBe(sha256(ODD_DATA.subarray(0, ODD_LOGICAL)));
    expect(await sha256OfFile(at(ODD_NAME))).toBe(await sdkSha256(disks, ODD_NAME, ODD_LOGICAL));
    const out = path.join(work, 'odd-tail');
    await ddRange(at(ODD_NAME), ODD_LOGICAL - 1000, 5000, out);
    expect((await fsp.readFile(out)).equals(ODD_DATA.subarray(ODD_LOGICAL - 1000, ODD_LOGICAL))).toBe(true);
  });

  test('an unusable blobdisk_size is ignored: the page blob size is reported', async () => {
    expect(await statOf(at('badsize.img'), '%s')).toBe('4096');
  });
});

describe('block blob with foreign block sizes', () => {
  test('sha256sum and md5sum equal the blob, read with a 1 MiB grain', async () => {
    expect(await statOf(at(FOREIGN_NAME), '%s')).toBe(String(FOREIGN.length));
    const expected = await sdkSha256(disks, FOREIGN_NAME);
    expect(expected).toBe(sha256(FOREIGN));
    expect(await sha256OfFile(at(FOREIGN_NAME))).toBe(expected);
    const md5 = await sh('md5sum', [at(FOREIGN_NAME)]);
    expect(md5.code).toBe(0);
    expect(md5.stdout.split(/\s/)[0]).toBe(crypto.createHash('md5').update(FOREIGN).digest('hex'));
  });

  test('odd reads across block boundaries equal the SDK ranges', async () => {
    const b0 = FOREIGN_BLOCKS[0]?.length ?? 0;
    const b1 = b0 + (FOREIGN_BLOCKS[1]?.length ?? 0);
    const b2 = b1 + (FOREIGN_BLOCKS[2]?.length ?? 0);
    const ranges: [number, number][] = [
      [b0 - 3, 10],
      [b1 - 100, MiB + 300],
      [b2 - 2, 9],
      [FOREIGN.length - 12_345, 12_345],
      [5 * MiB + 3, 3 * MiB + 11],
    ];
    for (const [offset, length] of ranges) {
      const out = path.join(work, `dd-foreign-${offset}`);
      await ddRange(at(FOREIGN_NAME), offset, length, out);
      const got = await fsp.readFile(out);
      expect(got.equals(FOREIGN.subarray(offset, offset + length))).toBe(true);
      expect(got.equals(await sdkRange(disks, FOREIGN_NAME, offset, length))).toBe(true);
    }
    // A reader with an unaligned block size sees the same bytes as a whole.
    const r = await sh('sh', ['-c', `dd if="$1" bs=12345 status=none | sha256sum`, 'sh', at(FOREIGN_NAME)]);
    expect(r.code).toBe(0);
    expect(r.stdout.split(/\s/)[0]).toBe(sha256(FOREIGN));
  });

  test('an empty block blob is an empty file', async () => {
    expect(await statOf(at('empty.txt'), '%s,%F')).toBe('0,regular empty file');
    const r = await sh('cat', [at('empty.txt')]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('');
  });
});

describe('namespace', () => {
  test('ls -la of the root shows virtual directories, marker directories and files', async () => {
    const r = await sh('ls', ['-la', mount.mnt]);
    expect(r.code).toBe(0);
    const byName = new Map(lines(r.stdout).slice(1).map((l) => [l.split(/\s+/).slice(8).join(' '), l] as const));
    expect([...byName.keys()].sort()).toEqual(['.', '..', 'a', 'badsize.img', 'blocks', 'empty-dir', 'empty.txt', 'odd.img', 'vm'].sort());
    for (const dir of ['a', 'blocks', 'empty-dir', 'vm']) expect(byName.get(dir)).toMatch(/^d/);
    for (const file of ['badsize.img', 'empty.txt', 'odd.img']) expect(byName.get(file)).toMatch(/^-/);
  });

  test("names with '/' are nested directories; hdi_isfolder markers are empty directories", async () => {
    const find = await sh('sh', ['-c', 'cd "$1" && find .', 'sh', at('a')]);
    expect(find.code).toBe(0);
    expect(lines(find.stdout).sort()).toEqual(['.', './b', './b/c', './b/c/deep.raw', './b/emptier'].sort());
    expect(await statOf(at('a/b'), '%F')).toBe('directory');
    expect(await statOf(at('a/b/emptier'), '%F')).toBe('directory');
    expect(await statOf(at('empty-dir'), '%F')).toBe('directory');

    const empty = await sh('ls', ['-A', at('empty-dir')]);
    expect(empty.code).toBe(0);
    expect(empty.stdout).toBe('');
    const la = await sh('ls', ['-la', at('empty-dir')]);
    expect(la.code).toBe(0);
    expect(lines(la.stdout).slice(1).map((l) => l.split(/\s+/).slice(8).join(' ')).sort()).toEqual(['.', '..']);

    const cat = await sh('cat', [at('a/b/c/deep.raw')]);
    expect(cat.code).toBe(0);
    expect(cat.stdout).toBe(DEEP_TEXT);
  });

  test('a missing path is ENOENT and a directory cannot be read as a file', async () => {
    const missing = await sh('stat', [at('no/such/file')]);
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toMatch(/No such file or directory/);
    const dir = await sh('cat', [at('vm')]);
    expect(dir.code).not.toBe(0);
    expect(dir.stderr).toMatch(/Is a directory/);
  });

  test('account mode (no --container) shows one directory per container', async () => {
    const account = await startMount([
      '--connection-string', azurite.connectionString,
      '--cache-dir', path.join(work, 'cache-account'),
      '--log-level', 'warn',
    ]);
    try {
      const ls = await sh('ls', ['-A', account.mnt]);
      expect(ls.code).toBe(0);
      expect(lines(ls.stdout).sort()).toEqual(['disks', 'other']);
      expect(await statOf(path.join(account.mnt, 'other'), '%F')).toBe('directory');
      const cat = await sh('cat', [path.join(account.mnt, 'other', 'hello.txt')]);
      expect(cat.code).toBe(0);
      expect(cat.stdout).toBe(HELLO_TEXT);
      expect(await statOf(path.join(account.mnt, 'disks', SPARSE_NAME), '%s')).toBe(String(SPARSE_SIZE));
      expect(await sha256OfFile(path.join(account.mnt, 'disks', FOREIGN_NAME))).toBe(sha256(FOREIGN));
      const missing = await sh('ls', [path.join(account.mnt, 'nosuchcontainer')]);
      expect(missing.code).not.toBe(0);
      const status = await account.status();
      expect(status.images.map((i) => i.path)).toContain(`disks/${FOREIGN_NAME}`);
    } finally {
      const stopped = await account.stop();
      expect(stopped.code).toBe(0);
    }
  });
});

describe('shutdown', () => {
  test('the mount unmounts cleanly on SIGTERM and exits 0', async () => {
    const stopped = await mount.stop();
    expect(stopped.clean).toBe(true);
    expect(stopped.code).toBe(0);
    expect(stopped.stderr).toContain(`blobdisk: unmounted ${mount.mnt}`);
    const mounts = await fsp.readFile('/proc/mounts', 'utf8');
    expect(mounts).not.toContain(` ${mount.mnt} `);
  });
});
