/* `npm run soak -- --kill-cycles N [--seed S] [--check-every N] [--image-size MiB]`: the kill -9
 * soak of test/support/kill-soak.ts on its own in-memory Azurite. Prints the seed first,
 * progress and a summary line; exits 1 with a report when an acknowledged write is lost. */

import { startAzurite, type RunningAzurite } from '../lib/azurite';
import { KILL_SOAK_DEFAULTS, KillSoakFailure, runKillSoak } from '../test/support/kill-soak';
import { randomSeed } from '../test/support/fsx';
import { cleanupOnSignals } from '../test/support/mount';

export const KILL_USAGE = 'usage: npm run soak -- --kill-cycles N [--seed S] [--check-every N] [--image-size MIB] [--live-ms MIN,MAX]';

export async function killSoakMain(argv: readonly string[]): Promise<number> {
  const log = (line: string): void => void process.stderr.write(`kill-soak: ${line}\n`);
  let cycles = 100;
  let seed = randomSeed();
  let checkEvery: number = KILL_SOAK_DEFAULTS.checkEvery;
  let imageSize: number = KILL_SOAK_DEFAULTS.imageSize;
  let liveMs: readonly [number, number] = KILL_SOAK_DEFAULTS.liveMs;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = (min: number): number => {
      const n = Number(argv[++i]);
      if (!Number.isInteger(n) || n < min) throw new Error(`${a} needs an integer of at least ${min}\n${KILL_USAGE}`);
      return n;
    };
    if (a === '--kill-cycles') cycles = value(1);
    else if (a === '--seed') seed = value(0) >>> 0;
    else if (a === '--check-every') checkEvery = value(1);
    else if (a === '--image-size') imageSize = value(1) * 2 ** 20;
    else if (a === '--live-ms') {
      const [lo, hi] = String(argv[++i]).split(',').map(Number);
      if (!Number.isInteger(lo) || !Number.isInteger(hi) || (lo as number) < 0 || (hi as number) < (lo as number)) throw new Error(`--live-ms takes MIN,MAX in ms\n${KILL_USAGE}`);
      liveMs = [lo as number, hi as number];
    } else throw new Error(`unknown argument ${a}\n${KILL_USAGE}`);
  }
  let azurite: RunningAzurite | undefined;
  const cleanup = cleanupOnSignals((line) => log(`${line} (seed ${seed})`), async () => azurite?.stop());
  try {
    azurite = await startAzurite({ inMemory: true, host: '127.0.0.1' });
    const s = await runKillSoak({ connectionString: azurite.connectionString, container: 'killsoak', cycles, seed, checkEvery, imageSize, liveMs, log });
    for (const note of s.notes) log(`note: ${note}`);
    log(
      `${s.cycles} cycles, ${s.acked} acknowledged writes, ${s.lost} lost ` +
        `(seed ${s.seed}; ${s.inFlight} writes cut off by a kill, either outcome accepted; ${s.checks} checks through an empty cache; ` +
        `slowest kill-to-ready ${(s.slowestRemountMs / 1000).toFixed(1)} s; ${s.seconds.toFixed(0)} s)`,
    );
    return s.lost === 0 ? 0 : 1;
  } catch (e) {
    process.stderr.write(`${e instanceof KillSoakFailure ? e.message : `kill-soak: ${e instanceof Error ? e.stack : String(e)}`}\n`);
    return 1;
  } finally {
    await cleanup();
  }
}
