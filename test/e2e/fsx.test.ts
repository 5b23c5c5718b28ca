/* End to end: the fsx exerciser (test/support/fsx.ts) on a real mount and a real Azurite.
 * Random writes, reads, truncates, fsyncs and reopens on page blobs and block blobs of up
 * to 4 MiB, every read compared with an in-memory model; remounts on the same cache and on
 * an empty one, with Azure compared by direct SDK downloads before each empty-cache remount
 * and at the end. Fixed seeds keep CI repeatable; FSX_SEED=<n> runs another one, and
 * `npm run soak` runs for longer. Needs root, /dev/fuse, libfuse3 and a build (npm test
 * builds first): the worker runs from dist/.
 */

import fs from 'node:fs';
import path from 'node:path';
import { startAzurite, type RunningAzurite } from '../../lib/azurite';
import { FSX_DEFAULTS, runFsx, type FsxOptions, type FsxSummary } from '../support/fsx';
import { ROOT, removeTempDirs, stopAllMounts } from '../support/mount';

const MiB = 1024 * 1024;
const SEED = process.env.FSX_SEED !== undefined ? Number(process.env.FSX_SEED) >>> 0 : 20251125;

let azurite: RunningAzurite;

beforeAll(async () => {
  azurite = await startAzurite({ inMemory: true, host: '127.0.0.1' });
});

afterAll(async () => {
  await stopAllMounts();
  await azurite?.stop();
  await removeTempDirs();
});

/** Runs fsx; the failure report (seed, op, offset, first differing byte, last ops) becomes
 *  the assertion message. */
async function exercise(options: Partial<FsxOptions> & Pick<FsxOptions, 'ops' | 'remountEvery' | 'container'>): Promise<FsxSummary> {
  let summary: FsxSummary | undefined;
  let report = '';
  try {
    summary = await runFsx({
      ...FSX_DEFAULTS,
      seed: SEED,
      maxFileSize: 4 * MiB,
      connectionString: azurite.connectionString,
      log: () => undefined,
      progressEverySeconds: 0,
      ...options,
    });
  } catch (e) {
    report = e instanceof Error ? e.message : String(e);
  }
  expect(report).toBe('');
  expect(summary).toBeDefined();
  return summary as FsxSummary;
}

function expectThorough(s: FsxSummary, files: number, ops: number): void {
  expect(s.ops).toBe(ops);
  // Two remounts: the first on the same cache, the second on an empty one.
  expect({ remounts: s.remounts, cold: s.coldRemounts }).toEqual({ remounts: 2, cold: 1 });
  // Every kind of op ran (flushes are rare: one op in about 200), and the checks saw real data.
  for (const [kind, count] of Object.entries(s.counts)) if (kind !== 'flush') expect({ kind, ran: count > 0 }).toEqual({ kind, ran: true });
  expect(s.bytesWritten).toBeGreaterThan(2 * MiB);
  expect(s.bytesCompared).toBeGreaterThan(s.bytesWritten);
  // Every file at each empty-cache remount and at the end, plus the flush ops.
  expect(s.azureChecks).toBeGreaterThanOrEqual(files * (s.coldRemounts + 1) + s.counts.flush);
}

test('the worker is built and not older than its source', () => {
  const js = path.join(ROOT, 'dist', 'test', 'support', 'fsx-worker.js');
  const ts = path.join(ROOT, 'test', 'support', 'fsx-worker.ts');
  expect(fs.existsSync(js) ? 'built' : `${js} is missing: run npm run build`).toBe('built');
  expect(fs.statSync(js).mtimeMs).toBeGreaterThanOrEqual(fs.statSync(ts).mtimeMs);
});

test(`page and block blobs, every op incl. shrinking, uploads only when asked for (seed ${SEED})`, async () => {
  const ops = 900;
  // Uploads happen at fsync with --sync cloud, at blobdisk flush and at unmount, never under
  // another op; no grain is evicted (32 MiB of cache for four files of up to 4 MiB).
  const s = await exercise({ ops, remountEvery: 300, container: 'fsx-quiet', cacheSize: 32 * MiB, writeBackDelays: ['3600'] });
  expectThorough(s, 4, ops);
}, 120_000);

test(`page and block blobs, every op incl. shrinking, background uploads and evictions from a 4 MiB cache (seed ${SEED})`, async () => {
  const ops = 1200;
  const s = await exercise({ ops, remountEvery: 400, container: 'fsx-busy', cacheSize: 4 * MiB });
  expectThorough(s, 4, ops);
}, 180_000);

test(`block blobs, every op incl. shrinking, background uploads and evictions from a 2 MiB cache (seed ${SEED})`, async () => {
  // Half of the ops fall on the two block blobs; the others are skipped.
  const ops = 1200;
  const s = await exercise({ ops, remountEvery: 400, container: 'fsx-evict', cacheSize: 2 * MiB, only: ['f1.bin', 'f3.bin'] });
  expectThorough(s, 2, ops);
}, 180_000);
