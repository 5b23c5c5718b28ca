/* How much boot-time prefetch (lib/image/boot.ts) shortens a cold boot-style trace: the
 * trace of bench/trace.ts (300 random reads of 4-64 KiB over a 256 MiB page blob, seed 7)
 * through a mount with an empty cache, then through a mount whose cache directory
 * remembers the last boot but holds nothing of the image (the blob changed elsewhere):
 * once with the trace running alongside the warm-up, once after the warm-up finished.
 * Azurite in memory; every mount is a child process. Prints JSON.
 *
 *   node dist/bench/boot-prefetch.js [--rounds N] */

import path from 'node:path';
import { startAzurite } from '../lib/azurite';
import { randomData, removeTempDirs, sh, stopAllMounts, uploadPageBlob, waitFor, type RunningMount } from '../test/support/mount';
import { containerOn, freshCacheDir, mountOn } from '../test/support/write-helpers';

const MiB = 1024 * 1024;
const SIZE = 256 * MiB;

async function main(argv: string[]): Promise<void> {
  const rounds = Number(argv[argv.indexOf('--rounds') + 1] ?? 2) || 2;
  const azurite = await startAzurite({ inMemory: true });
  try {
    const container = await containerOn(azurite.connectionString, 'boot');
    const ranges = [];
    for (let at = 0; at < SIZE; at += 4 * MiB) ranges.push({ offset: at, data: randomData(4 * MiB) });
    await uploadPageBlob(container, 'disk.img', SIZE, ranges);
    const mount = async (cacheDir: string): Promise<RunningMount> => mountOn(azurite.connectionString, 'boot', cacheDir);
    const trace = async (m: RunningMount): Promise<number> => {
      const r = await sh(process.execPath, [path.join(__dirname, 'trace.js'), path.join(m.mnt, 'disk.img'), '7', '300', String(SIZE), '0', '0'], { timeoutMs: 300_000 });
      return (JSON.parse(r.stdout) as { randomMs: number }).randomMs;
    };
    const change = async (): Promise<void> => {
      const b = randomData(4096);
      await container.getPageBlobClient('disk.img').uploadPages(b, SIZE - 4096, 4096);
    };
    const cache = await freshCacheDir();
    let m = await mount(cache);
    await trace(m); // the boot that is remembered
    await m.stop();
    const out: Record<string, number>[] = [];
    for (let round = 0; round < rounds; round++) {
      m = await mount(await freshCacheDir());
      const coldMs = await trace(m);
      await m.stop();
      await change();
      m = await mount(cache);
      const alongsideMs = await trace(m);
      await m.stop();
      await change();
      m = await mount(cache);
      await sh('dd', [`if=${path.join(m.mnt, 'disk.img')}`, 'of=/dev/null', 'bs=4096', 'count=1', 'status=none']);
      const t0 = Date.now();
      const running = m;
      await waitFor(async () => (await running.status()).images[0]?.prefetch?.state === 'done', 120_000, 50);
      const warmUpMs = Date.now() - t0;
      const afterMs = await trace(m);
      await m.stop();
      await change();
      out.push({ coldMs: Math.round(coldMs), alongsideMs: Math.round(alongsideMs), warmUpMs, afterWarmUpMs: Math.round(afterMs) });
    }
    process.stdout.write(`${JSON.stringify(out)}\n`);
  } finally {
    await stopAllMounts();
    await azurite.stop();
    await removeTempDirs();
  }
}

main(process.argv.slice(2)).catch((e: unknown) => {
  process.stderr.write(`${(e as Error).stack ?? String(e)}\n`);
  process.exitCode = 1;
});
