/* A short run of the kill -9 soak (test/support/kill-soak.ts; the long one is
 * `npm run soak -- --kill-cycles 100`): O_DIRECT writers on a page blob while the mount is
 * SIGKILLed, cleared and mounted again on the same cache directory, five times; then every
 * acknowledged write is checked through a mount with an empty cache. Needs root and /dev/fuse. */

import { startAzurite, type RunningAzurite } from '../../lib/azurite';
import { KILL_SOAK_DEFAULTS, runKillSoak } from '../support/kill-soak';
import { removeTempDirs, stopAllMounts } from '../support/mount';

let azurite: RunningAzurite;

beforeAll(async () => {
  azurite = await startAzurite({ inMemory: true, host: '127.0.0.1' });
});

afterAll(async () => {
  await stopAllMounts();
  await azurite?.stop();
  await removeTempDirs();
});

test('five kill -9 cycles under O_DIRECT writers lose no acknowledged write', async () => {
  const seed = Number(process.env.KILL_SOAK_SEED ?? 1405);
  const lines: string[] = [];
  const summary = await runKillSoak({
    ...KILL_SOAK_DEFAULTS,
    connectionString: azurite.connectionString,
    container: 'killsoak',
    cycles: 5,
    checkEvery: 5,
    seed,
    liveMs: [300, 1500],
    log: (l) => void lines.push(l),
  });
  expect({ lost: summary.lost, notes: summary.notes }).toEqual({ lost: 0, notes: [] });
  expect(summary.acked).toBeGreaterThan(20);
  // A remount right after the kill takes its lease back: no wait for the lease to expire.
  expect(summary.slowestRemountMs).toBeLessThan(30_000);
}, 180_000);
