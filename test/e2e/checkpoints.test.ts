/* End to end: crash-consistent checkpoints through a real mount on Azurite. mkfs.ext4 on a
 * page blob through a loop device, files copied in with `sync` between batches (fsyncs of
 * the image), the mount killed with SIGKILL at a seeded random point (CHECKPOINT_SEED=<n>
 * replays one); then every checkpoint, downloaded with the SDK, loop-mounts (replaying its
 * journal) and passes `e2fsck -fn`: no checkpoint is a torn mix of two moments.
 * Needs root, /dev/fuse, libfuse3, e2fsprogs and free loop devices. */

import type { ContainerClient } from '@azure/storage-blob';
import path from 'node:path';
import { startAzurite, type RunningAzurite } from '../../lib/azurite';
import { forceUnmount, makeTempDir, waitFor, removeTempDirs, sh, stopAllMounts, type RunningMount } from '../support/mount';
import { seeded } from '../support/seeded';
import { MiB, containerOn, freshCacheDir, mountOn, ok } from '../support/write-helpers';

const CONTAINER = 'checkpoints';
const IMAGE = 'vm/ext4.img';
const SEED = Number(process.env.CHECKPOINT_SEED ?? Date.now() % 100_000);

let azurite: RunningAzurite;
let container: ContainerClient;
let mount: RunningMount | undefined;

beforeAll(async () => {
  azurite = await startAzurite({ inMemory: true });
  container = await containerOn(azurite.connectionString, CONTAINER);
});

afterAll(async () => {
  await stopAllMounts();
  await azurite?.stop();
  await removeTempDirs();
});

/** Loop-mounts `file` on a new directory (ext4 replays its journal), then lets go of both. */
async function mountAndRelease(file: string): Promise<void> {
  const loop = ok(await sh('losetup', ['--find', '--show', file]), 'losetup').stdout.trim();
  const dir = await makeTempDir('blobdisk-cp-ext4-');
  try {
    ok(await sh('mount', ['-t', 'ext4', loop, dir], { timeoutMs: 30_000 }), `mount of checkpoint ${file}`);
    ok(await sh('umount', [dir], { timeoutMs: 30_000 }), 'umount');
  } finally {
    await sh('losetup', ['--detach', loop], { timeoutMs: 20_000 });
  }
}

test('every checkpoint taken before a kill -9 in an ext4 copy workload passes e2fsck -fn', async () => {
  const rnd = seeded(SEED);
  const batches = 4 + Math.floor(rnd() * 5);
  const killAfter = 1 + Math.floor(rnd() * (batches - 1));
  const killMidCopy = rnd() < 0.5;
  console.log(`checkpoints e2e: seed ${SEED} (CHECKPOINT_SEED replays it): ${batches} batches, kill -9 after batch ${killAfter}${killMidCopy ? ' in the middle of the next copy' : ''}`);
  mount = await mountOn(azurite.connectionString, CONTAINER, await freshCacheDir(), ['--grain-size', '1M', '--checkpoints', '50', '--checkpoint-interval', '0', '--write-back-delay', '0.2']);
  const image = path.join(mount.mnt, IMAGE);
  ok(await sh('mkdir', ['-p', path.dirname(image)]), 'mkdir');
  ok(await sh('truncate', ['-s', String(48 * MiB), image]), 'truncate');
  const loop = ok(await sh('losetup', ['--find', '--show', image]), 'losetup').stdout.trim();
  const dir = await makeTempDir('blobdisk-ext4-');
  let ext4Mounted = false;
  let madeAt = '';
  try {
    ok(await sh('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard', loop], { timeoutMs: 60_000 }), 'mkfs.ext4');
    // Checkpoints of fsyncs inside mkfs hold no file system yet: only later ones are checked.
    ok(await sh('sync', [loop]), 'sync of the loop device');
    madeAt = new Date().toISOString();
    ok(await sh('mount', ['-t', 'ext4', loop, dir]), 'mount ext4');
    ext4Mounted = true;
    for (let b = 0; b < batches; b++) {
      const files = 2 + Math.floor(rnd() * 4);
      const copy = async (): Promise<void> => {
        ok(await sh('mkdir', ['-p', `${dir}/b${b}`]), 'mkdir in ext4');
        for (let f = 0; f < files; f++) {
          const kib = 64 + Math.floor(rnd() * 1024);
          await sh('dd', ['if=/dev/urandom', `of=${dir}/b${b}/f${f}`, 'bs=1K', `count=${kib}`, 'status=none'], { timeoutMs: 30_000 });
        }
        await sh('sync', ['-f', dir], { timeoutMs: 60_000 });
      };
      if (b === killAfter) {
        if (killMidCopy) {
          const copying = copy();
          await new Promise((r) => setTimeout(r, Math.floor(rnd() * 300)));
          mount.child.kill('SIGKILL');
          await copying.catch(() => undefined);
        } else {
          mount.child.kill('SIGKILL');
        }
        break;
      }
      await copy();
      if (b === 0) {
        // `blobdisk status` shows the image's last checkpoint once one was taken after the sync.
        const m = mount;
        const shown = await waitFor(async () => ((await m.status()).images.find((i) => i.path === IMAGE)?.lastCheckpoint ?? '') > madeAt, 20_000);
        expect(shown).toBe(true);
      }
    }
    if (!mount.child.killed) mount.child.kill('SIGKILL');
    await mount.exited;
  } finally {
    // The FUSE server is dead: let go of ext4 and the loop device lazily, then of the mount.
    if (ext4Mounted) await sh('umount', ['-l', dir], { timeoutMs: 20_000 });
    await sh('losetup', ['--detach', loop], { timeoutMs: 20_000 });
    await forceUnmount(mount.mnt);
  }

  const checkpoints: string[] = [];
  for await (const item of container.listBlobsFlat({ prefix: IMAGE, includeSnapshots: true, includeMetadata: true })) {
    const at = item.metadata?.blobdisk_checkpoint;
    if (item.name === IMAGE && item.snapshot && at !== undefined && at > madeAt) checkpoints.push(item.snapshot);
  }
  console.log(`checkpoints e2e: seed ${SEED}: ${checkpoints.length} checkpoints after mkfs to check`);
  expect(checkpoints.length).toBeGreaterThan(0);
  const local = path.join(await makeTempDir('blobdisk-cp-'), 'checkpoint.img');
  for (const snapshot of checkpoints) {
    await container.getBlobClient(IMAGE).withSnapshot(snapshot).downloadToFile(local);
    await mountAndRelease(local);
    const fsck = await sh('e2fsck', ['-fn', local], { timeoutMs: 60_000 });
    if (fsck.code !== 0) throw new Error(`seed ${SEED}: checkpoint ${snapshot} fails e2fsck -fn:\n${fsck.stdout}${fsck.stderr}`);
  }
}, 170_000);
