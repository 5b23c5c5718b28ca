/* `npm run soak -- --ops N [--seed S] [--files K] ...`: the fsx exerciser of the tests
 * (test/support/fsx.ts) for as long as asked, on its own in-memory Azurite. Prints the seed
 * first, progress every so often and a summary; exits 1 with the failure report (seed, op,
 * file, offset, last ops and the command that replays it) when anything differs. */

import { startAzurite, type RunningAzurite } from '../lib/azurite';
import { FSX_DEFAULTS, FsxFailure, randomSeed, runFsx, type FsxOptions } from '../test/support/fsx';
import { cleanupOnSignals } from '../test/support/mount';
import { killSoakMain } from './kill-soak';

const USAGE =
  'usage: npm run soak -- [--ops N] [--seed S] [--files K] [--remount-every N] [--cold-every N]\n' +
  '                       [--grain-size BYTES] [--cache-size BYTES] [--max-file-size BYTES] [--max-io BYTES]\n' +
  '                       [--progress SECONDS] [--trace] [--only f2.img,...] [--no-shrink]\n' +
  '                       [--write-back-delays S,S,...] [--azurite-log FILE]';

type Args = Omit<FsxOptions, 'connectionString' | 'container' | 'log'> & { azuriteLog?: string };

function parseArgs(argv: readonly string[]): Args {
  const args: { -readonly [K in keyof Args]: Args[K] } = { ...FSX_DEFAULTS, seed: randomSeed(), ops: 100_000 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = (min: number): number => {
      const n = Number(argv[++i]);
      if (!Number.isInteger(n) || n < min) throw new Error(`${a} needs an integer of at least ${min}\n${USAGE}`);
      return n;
    };
    if (a === '--ops') args.ops = value(1);
    else if (a === '--seed') args.seed = value(0) >>> 0;
    else if (a === '--files') args.files = value(1);
    else if (a === '--remount-every') args.remountEvery = value(1);
    else if (a === '--cold-every') args.coldEvery = value(1);
    else if (a === '--grain-size') args.grainSize = value(1);
    else if (a === '--cache-size') args.cacheSize = value(1);
    else if (a === '--max-file-size') args.maxFileSize = value(1);
    else if (a === '--max-io') args.maxIo = value(1);
    else if (a === '--progress') args.progressEverySeconds = value(0);
    else if (a === '--trace') args.trace = true;
    else if (a === '--no-shrink') args.shrink = false;
    else if (a === '--write-back-delays') args.writeBackDelays = String(argv[++i]).split(',');
    else if (a === '--azurite-log') args.azuriteLog = String(argv[++i]);
    else if (a === '--only') args.only = [...(args.only ?? []), ...String(argv[++i]).split(',')];
    else throw new Error(`unknown argument ${a}\n${USAGE}`);
  }
  if (args.maxFileSize % args.grainSize !== 0) throw new Error('--max-file-size must be a multiple of --grain-size');
  return args;
}

async function main(): Promise<number> {
  if (process.argv.includes('--kill-cycles')) {
    try {
      return await killSoakMain(process.argv.slice(2));
    } catch (e) {
      process.stderr.write(`kill-soak: ${e instanceof Error ? e.message : String(e)}\n`);
      return 2;
    }
  }
  let args: Args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`soak: ${e instanceof Error ? e.message : String(e)}\n`);
    return 2;
  }
  const log = (line: string): void => void process.stderr.write(`soak: ${line}\n`);
  log(`seed ${args.seed}, ${args.ops} ops on ${args.files} files, remount every ${args.remountEvery} ops`);
  let azurite: RunningAzurite | undefined;
  const cleanup = cleanupOnSignals((line) => log(`${line} (seed ${args.seed})`), async () => azurite?.stop());
  try {
    // Azurite's request log shows what reached Azure and when, next to a failure's last ops.
    const { azuriteLog, ...fsx } = args;
    azurite = await startAzurite({ inMemory: true, host: '127.0.0.1', ...(azuriteLog !== undefined ? { debugLog: azuriteLog } : {}) });
    const summary = await runFsx({ ...fsx, connectionString: azurite.connectionString, container: 'soak', log });
    const c = summary.counts;
    log(
      `passed: seed ${summary.seed}, ${summary.ops} ops in ${summary.seconds.toFixed(0)} s (${Math.round(summary.ops / summary.seconds)} ops/s); ` +
        `${c.write} writes, ${c.read} reads, ${c.truncate} truncates, ${c.sync} fsyncs, ${c.reopen} reopens, ${c.stat} stats, ${c.verify} whole-file reads, ${c.flush} flushes; ` +
        `${summary.remounts} remounts (${summary.coldRemounts} with an empty cache); ` +
        `${(summary.bytesWritten / 2 ** 20).toFixed(0)} MiB written, ${(summary.bytesCompared / 2 ** 20).toFixed(0)} MiB compared, ${summary.azureChecks} blobs compared in Azure`,
    );
    const time = Object.entries(summary.secondsByKind).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(', ');
    log(`seconds spent: ${time}`);
    return 0;
  } catch (e) {
    process.stderr.write(`${e instanceof FsxFailure ? e.message : `soak: ${e instanceof Error ? e.stack : String(e)}`}\n`);
    return 1;
  } finally {
    await cleanup();
  }
}

void main().then((code) => {
  process.exitCode = code;
});
