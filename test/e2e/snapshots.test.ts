/* End to end: snapshots, clones and diff through a real FUSE mount on a real Azurite, with
 * the CLI (`blobdisk snapshot|clone|diff|rm`) and real tools (dd, cat, ls, rm, mv, truncate).
 * Snapshots taken by the CLI and by the SDK both show under .snapshots and read back equal
 * to SDK downloads of the snapshot; a snapshot read while dd rewrites its image shows the
 * snapshot's moment; writes there fail with EROFS; rm is refused while snapshots exist;
 * clones of a snapshot and of an image read back equal to SDK downloads; diff finds known
 * changes. Azurite's own page-range diff ignores the snapshot (DESIGN.md), so diff here is
 * tested by its bytes and listings comparisons; the service path is tested on the in-memory
 * store (test/unit/snapshots.test.ts). Needs root, /dev/fuse and libfuse2. */

import type { ContainerClient } from '@azure/storage-blob';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { startAzurite, type RunningAzurite } from '../../lib/azurite';
import { cliEnv, lines, makeTempDir, randomData, removeTempDirs, runCli, sh, sleep, statOf, stopAllMounts, uploadBlockBlob, uploadPageBlob, type RunningMount } from '../support/mount';
import { KiB, MiB, containerOn, ddWrite, expectBytes, freshCacheDir, mountOn, ok, readAll, sdkDownload, unmountClean } from '../support/write-helpers';

const CONTAINER = 'snaps';
/* The mount trusts listings for this long; snapshots taken by other tools show after it. */
const TTL_SECONDS = 1;

let azurite: RunningAzurite;
let container: ContainerClient;
let mount: RunningMount;

const DISK = { name: 'vm/disk.img', size: 16 * MiB, ranges: [0, 6].map((m) => ({ offset: m * MiB, data: randomData(MiB) })) };
const DIFF = { name: 'diff/d.img', size: 32 * MiB, ranges: [0, 8, 20].map((m) => ({ offset: m * MiB, data: randomData(MiB) })) };

const cli = (args: readonly string[]) => runCli(args, { timeoutMs: 90_000, env: cliEnv() });
const at = (p: string): string => path.join(mount.mnt, p);

async function sdkSnapshot(name: string, snapshot: string): Promise<Buffer> {
  return container.getBlobClient(name).withSnapshot(snapshot).downloadToBuffer();
}

async function snapshotIds(prefix: string): Promise<{ name: string; snapshot: string; label: string | undefined }[]> {
  const out: { name: string; snapshot: string; label: string | undefined }[] = [];
  for await (const item of container.listBlobsFlat({ prefix, includeSnapshots: true, includeMetadata: true })) {
    if (item.snapshot) out.push({ name: item.name, snapshot: item.snapshot, label: item.metadata?.blobdisk_snapshot });
  }
  return out;
}

beforeAll(async () => {
  azurite = await startAzurite({ inMemory: true });
  container = await containerOn(azurite.connectionString, CONTAINER);
  await uploadPageBlob(container, DISK.name, DISK.size, DISK.ranges);
  await uploadPageBlob(container, DIFF.name, DIFF.size, DIFF.ranges);
  await uploadBlockBlob(container, 'diff/b.bin', [randomData(2 * MiB), randomData(2 * MiB), randomData(2 * MiB)]);
  for (const name of ['del/a.img', 'del/b.img']) await uploadPageBlob(container, name, 4 * MiB, [{ offset: 0, data: randomData(MiB) }]);
  mount = await mountOn(azurite.connectionString, CONTAINER, await freshCacheDir(), ['--dir-cache-time', String(TTL_SECONDS)]);
});

afterAll(async () => {
  await stopAllMounts();
  await azurite?.stop();
  await removeTempDirs();
});

describe('snapshots through the mount', () => {
  test('CLI and SDK snapshots show under .snapshots, read back equal to SDK downloads, and refuse writes', async () => {
    const a = randomData(256 * KiB);
    ok(await ddWrite(at(DISK.name), MiB, a), 'dd write before the snapshot');
    const r = ok(await cli(['snapshot', mount.mnt, DISK.name, '--name', 'before']), 'blobdisk snapshot');
    expect(r.stdout.trim()).toBe(at('vm/.snapshots/disk.img/before'));
    ok(await ddWrite(at(DISK.name), MiB, randomData(256 * KiB)), 'dd write after the snapshot');
    ok(await ddWrite(at(DISK.name), 10 * MiB, randomData(MiB)), 'dd write after the snapshot');
    // Another tool's snapshot (the mount holds the lease; a snapshot needs none).
    const bySdk = (await container.getPageBlobClient(DISK.name).createSnapshot()).snapshot ?? '';
    expect(bySdk).not.toBe('');
    await sleep(TTL_SECONDS * 1000 + 200);

    const ids = await snapshotIds('vm/');
    const before = ids.find((s) => s.label === 'before');
    expect(before).toBeDefined();
    const listed = ok(await sh('ls', ['-la', at('vm/.snapshots/disk.img')]), 'ls -la .snapshots/disk.img');
    expect(listed.stdout).toContain(' before\n');
    expect(listed.stdout).toContain(` ${bySdk}\n`);
    expect(listed.stdout).toMatch(/^-r--r--r-- .* 16777216 .* before$/m);
    expect(ok(await sh('ls', ['-la', at('vm/.snapshots')]), 'ls -la .snapshots').stdout).toMatch(/^dr-xr-xr-x .* disk\.img$/m);
    expect(lines(ok(await sh('ls', [at('vm')]), 'ls').stdout)).toEqual(['disk.img']);
    expect(lines(ok(await sh('ls', ['-a', at('vm')]), 'ls -a').stdout)).toEqual(['.', '..', '.snapshots', 'disk.img']);
    expect(await statOf(at('vm/.snapshots/disk.img/before'), '%s')).toBe(String(DISK.size));

    const beforeBytes = await readAll(at('vm/.snapshots/disk.img/before'));
    expectBytes(beforeBytes, await sdkSnapshot(DISK.name, before?.snapshot ?? ''), 'the CLI snapshot through the mount vs the SDK');
    expectBytes(beforeBytes.subarray(MiB, MiB + a.length), a, 'the CLI snapshot holds what was written before it');
    expectBytes(await readAll(at(`vm/.snapshots/disk.img/${bySdk}`)), await sdkSnapshot(DISK.name, bySdk), 'the SDK snapshot through the mount vs the SDK');

    const snap = at('vm/.snapshots/disk.img/before');
    for (const [what, cmd, args] of [
      ['dd', 'dd', ['if=/dev/zero', `of=${snap}`, 'bs=512', 'count=1', 'conv=notrunc', 'status=none']],
      ['truncate', 'truncate', ['-s', '0', snap]],
      ['rm', 'rm', ['-f', snap]],
      ['mv', 'mv', [snap, at('vm/moved.img')]],
    ] as const) {
      const w = await sh(cmd, [...args]);
      expect({ what, code: w.code === 0 ? 0 : 'failed', erofs: /Read-only file system/.test(w.stderr) }).toEqual({ what, code: 'failed', erofs: true });
    }
    expectBytes(await sdkSnapshot(DISK.name, before?.snapshot ?? ''), beforeBytes, 'the snapshot after the refused writes');
  });

  test('a snapshot read while dd rewrites its image shows the snapshot\'s moment', async () => {
    ok(await cli(['snapshot', mount.mnt, DISK.name, '--name', 'moment']), 'blobdisk snapshot');
    const id = (await snapshotIds('vm/')).find((s) => s.label === 'moment')?.snapshot ?? '';
    const expected = await sdkSnapshot(DISK.name, id);
    // The writer rewrites the whole image, with fsyncs, until told to stop, while the reader
    // reads the snapshot, never read before (so every grain is fetched while the writes go on).
    const stop = path.join(await makeTempDir('blobdisk-stop-'), 'stop');
    const script = 'n=0; while [ ! -e "$2" ]; do dd if=/dev/urandom of="$1" bs=1M count=16 conv=notrunc,fsync status=none || exit 1; n=$((n+1)); done; echo $n';
    const writer = sh('sh', ['-c', script, 'sh', at(DISK.name), stop], { timeoutMs: 180_000 });
    await sleep(300);
    const first = await readAll(at('vm/.snapshots/disk.img/moment'));
    const second = await readAll(at('vm/.snapshots/disk.img/moment'));
    await fsp.writeFile(stop, '');
    const rewrites = Number(ok(await writer, 'the writer').stdout.trim());
    expect(rewrites).toBeGreaterThanOrEqual(1);
    expectBytes(first, expected, 'the snapshot read during the writes');
    expectBytes(second, expected, 'the snapshot read again');
    ok(await sh('sync', [at(DISK.name)]), 'sync');
    const now = await readAll(at(DISK.name));
    expect(now.equals(expected)).toBe(false);
  });

  test('rm is refused while snapshots exist, unless --with-snapshots; snapshot --delete deletes one', async () => {
    ok(await cli(['snapshot', mount.mnt, 'del/a.img']), 'snapshot of a');
    const refused = await sh('rm', [at('del/a.img')]);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toContain('Device or resource busy');
    const hints = mount.stderr().split('\n').filter((l) => l.includes('del/a.img') && l.includes('blobdisk rm --with-snapshots'));
    expect(hints).toHaveLength(1);
    const byCli = await cli(['rm', mount.mnt, 'del/a.img']);
    expect(byCli.code).toBe(1);
    expect(byCli.stderr).toContain('--with-snapshots');
    expect((await snapshotIds('del/a.img')).length).toBe(1);
    ok(await cli(['rm', mount.mnt, 'del/a.img', '--with-snapshots']), 'rm --with-snapshots');
    expect(await snapshotIds('del/a.img')).toEqual([]);
    expect(await container.getBlobClient('del/a.img').exists()).toBe(false);
    expect(ok(await sh('ls', ['-a', at('del')]), 'ls').stdout).not.toContain('a.img');

    ok(await cli(['snapshot', mount.mnt, 'del/b.img', '--name', 'one']), 'snapshot one');
    ok(await cli(['snapshot', mount.mnt, 'del/b.img', '--name', 'two']), 'snapshot two');
    ok(await cli(['snapshot', '--delete', mount.mnt, 'del/b.img', 'one']), 'snapshot --delete');
    expect((await snapshotIds('del/b.img')).map((s) => s.label)).toEqual(['two']);
    await sleep(TTL_SECONDS * 1000 + 200);
    expect(lines(ok(await sh('ls', [at('del/.snapshots/b.img')]), 'ls').stdout)).toEqual(['two']);
    expect((await sh('rm', [at('del/b.img')])).code).not.toBe(0);
    // mv copies and deletes the blob, which would take the snapshots along: refused too.
    const moved = await sh('mv', [at('del/b.img'), at('del/c.img')]);
    expect({ code: moved.code === 0 ? 0 : 'failed', busy: /Device or resource busy/.test(moved.stderr) }).toEqual({ code: 'failed', busy: true });
    expect(await container.getBlobClient('del/b.img').exists()).toBe(true);
    const missing = await cli(['snapshot', '--delete', mount.mnt, 'del/b.img', 'one']);
    expect({ code: missing.code, says: /no snapshot one/.test(missing.stderr) }).toEqual({ code: 1, says: true });
    ok(await cli(['snapshot', '--delete', mount.mnt, 'del/b.img', 'two']), 'snapshot --delete two');
    ok(await sh('rm', [at('del/b.img')]), 'rm once no snapshot is left');
    expect(await container.getBlobClient('del/b.img').exists()).toBe(false);
  });

  test('clones of a snapshot and of an image read back equal to SDK downloads', async () => {
    const fromSnap = ok(await cli(['clone', mount.mnt, 'vm/.snapshots/disk.img/before', 'vm/from-snap.img']), 'clone of a snapshot');
    expect(fromSnap.stderr).toContain('the copy is done');
    const before = (await snapshotIds('vm/')).find((s) => s.label === 'before')?.snapshot ?? '';
    const snapBytes = await sdkSnapshot(DISK.name, before);
    expectBytes(await readAll(at('vm/from-snap.img')), snapBytes, 'the clone of a snapshot through the mount');
    expectBytes(await sdkDownload(container, 'vm/from-snap.img'), snapBytes, 'the clone of a snapshot by the SDK');
    // The clone is an image of its own: written, it leaves the snapshot alone.
    ok(await ddWrite(at('vm/from-snap.img'), 0, randomData(64 * KiB), { conv: ['fsync'] }), 'dd into the clone');
    expectBytes(await sdkSnapshot(DISK.name, before), snapBytes, 'the snapshot after writing its clone');

    // Not flushed yet: the clone command flushes the image before its snapshot.
    const fresh = randomData(512 * KiB);
    ok(await ddWrite(at(DISK.name), 3 * MiB, fresh), 'dd write before cloning the image');
    const snapsBefore = (await snapshotIds('vm/disk.img')).length;
    ok(await cli(['clone', mount.mnt, DISK.name, 'vm/from-image.img']), 'clone of an image');
    const image = await readAll(at(DISK.name));
    expectBytes(image.subarray(3 * MiB, 3 * MiB + fresh.length), fresh, 'the image');
    expectBytes(await sdkDownload(container, 'vm/from-image.img'), image, 'the clone of an image by the SDK');
    expectBytes(await readAll(at('vm/from-image.img')), image, 'the clone of an image through the mount');
    // The snapshot taken for the clone is gone once Azure finished the copy.
    expect((await snapshotIds('vm/disk.img')).length).toBe(snapsBefore);

    const exists = await cli(['clone', mount.mnt, DISK.name, 'vm/from-image.img']);
    expect({ code: exists.code, says: /exists/.test(exists.stderr) }).toEqual({ code: 1, says: true });
  });

  test('diff after writing known ranges: bytes (auto on Azurite) and listings', async () => {
    ok(await cli(['snapshot', mount.mnt, DIFF.name, '--name', 'base']), 'snapshot base');
    const first = DIFF.ranges[0]?.data ?? Buffer.alloc(0);
    ok(await ddWrite(at(DIFF.name), 0, first.subarray(0, 64 * KiB)), 'the same bytes again'); // no change by bytes
    ok(await ddWrite(at(DIFF.name), 4 * MiB, randomData(64 * KiB)), 'new pages');
    ok(await ddWrite(at(DIFF.name), 8 * MiB + 512 * KiB, randomData(4 * KiB)), 'changed pages');
    ok(await ddWrite(at(DIFF.name), 20 * MiB, Buffer.alloc(MiB)), 'a grain of zeros: cleared pages');

    const auto = ok(await cli(['diff', mount.mnt, DIFF.name, '--since', 'base', '--json']), 'diff --json');
    const report = JSON.parse(auto.stdout) as { method: string; changed: unknown; cleared: unknown; unverified: unknown };
    expect(report).toMatchObject({
      method: 'bytes',
      changed: [{ start: 4 * MiB, end: 4 * MiB + 64 * KiB }, { start: 8 * MiB + 512 * KiB, end: 8 * MiB + 516 * KiB }],
      cleared: [{ start: 20 * MiB, end: 21 * MiB }],
      unverified: [],
    });
    expect(auto.stderr).toContain('by bytes');

    const listings = ok(await cli(['diff', mount.mnt, DIFF.name, '--since', 'base', '--compare', 'listings']), 'diff --compare listings');
    expect(lines(listings.stdout)).toEqual([
      `changed ${4 * MiB} ${64 * KiB}`,
      `cleared ${20 * MiB} ${MiB}`,
      `unverified 0 ${MiB}`,
      `unverified ${8 * MiB} ${MiB}`,
    ]);
    expect(listings.stderr).toContain('by listings');
    const unknown = await cli(['diff', mount.mnt, DIFF.name, '--since', 'nothing']);
    expect({ code: unknown.code, says: /no snapshot nothing/.test(unknown.stderr) }).toEqual({ code: 1, says: true });
  });

  test('diff of a block blob by its committed block lists', async () => {
    ok(await cli(['snapshot', mount.mnt, 'diff/b.bin', '--name', 'base']), 'snapshot base');
    ok(await ddWrite(at('diff/b.bin'), 2 * MiB + 100 * KiB, randomData(4 * KiB)), 'a patch in the second block');
    const r = ok(await cli(['diff', mount.mnt, 'diff/b.bin', '--since', 'base', '--json']), 'diff of a block blob');
    const report = JSON.parse(r.stdout) as { method: string; changed: { start: number; end: number }[]; cleared: unknown[]; unverified: unknown[] };
    expect({ method: report.method, cleared: report.cleared, unverified: report.unverified }).toEqual({ method: 'blocks', cleared: [], unverified: [] });
    // Only the restaged block(s) around the patch: not the first block, not the last.
    expect(report.changed.length).toBeGreaterThan(0);
    expect(report.changed.some((c) => c.start <= 2 * MiB + 100 * KiB && c.end >= 2 * MiB + 104 * KiB)).toBe(true);
    expect(report.changed.every((c) => c.start >= 2 * MiB && c.end <= 4 * MiB)).toBe(true);
  });
});

test('the mount drains and unmounts cleanly after all of it', async () => {
  await unmountClean(mount);
});
