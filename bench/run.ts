/* `npm run bench`: blobdisk's read path against its two ceilings, measured in one run on
 * one machine and reported as ratios, never as pass/fail:
 *   cold  sequential read through a fresh mount with an empty cache dir
 *         vs. a parallel SDK download of the same blob from the same Azurite;
 *   warm  sequential read of the cached image (same mount, and after a remount)
 *         vs. a bare fuse-native filesystem serving the same bytes from memory; like
 *         for like (the target) with blobdisk's grain files in the page cache, and, with
 *         the page cache dropped, against the speed at which the disk delivers them.
 * Every measurement is repeated (--reps, default 3) with the page cache dropped before
 * it, interleaved so that drift of the machine hits all sides alike; medians are
 * reported. A sweep of grain size and read-ahead (cold case) helps pick the defaults.
 * Results: a table on stdout, JSON in .bench/results.json.
 *
 *   npm run bench -- [--reps N] [--size MiB] [--no-sweep] [--profile] [--keep]
 *                    [--fuse-read-ahead KiB] [--no-nice]
 * The benchmark's processes run at nice -10 (unless --no-nice) so that unrelated work on
 * the machine disturbs them less; --fuse-read-ahead sets the kernel read-ahead of both FUSE
 * mounts alike, by default 1024 KiB (what blobdisk sets for its own mount as root). */

import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startAzurite, type RunningAzurite } from '../lib/azurite';
import { DEFAULTS } from '../lib/config';
import { sdkDownload, writePageBlob } from './azure';
import { MB, MiB, cpuSeconds, dropCaches, machineBusySeconds, median, round, run, sha256File, sizeFlag, table, timedRead, waitQuiet, type QuietResult, type ReadResult } from './lib';
import { Mount, countersBetween, type BlobdiskSettings, type StatusCounters } from './mounts';
import { newestProfile, summarizeProfile, type ProfileSummary } from './profile';

const ROOT = path.resolve(__dirname, '..', '..');
const CONTAINER = 'bench';
const IMAGE = 'x.img';
/** The SDK's default block size for downloads. */
const SDK_BLOCK = 4 * MiB;
/** blobdisk's largest GET: the SDK with the same block size. */
const SDK_BLOCK_LARGE = DEFAULTS.maxFetchBytes;
const SDK_CONCURRENCY = [4, 8] as const;
const CACHE_SIZE = 4 * 1024 * MiB;
const SWEEP_GRAINS = [256 * 1024, 1 * MiB, 4 * MiB];
const SWEEP_READ_AHEADS = [4 * MiB, 16 * MiB, 64 * MiB];
const TARGET_COLD = 0.8;
const TARGET_WARM = 0.85;

interface Args {
  reps: number;
  sizeBytes: number;
  sweep: boolean;
  profile: boolean;
  keep: boolean;
  fuseReadAheadKiB: number | undefined;
  nice: boolean;
}

function parseArgs(argv: string[]): Args {
  const args: Args = { reps: 3, sizeBytes: 256 * MiB, sweep: true, profile: false, keep: false, fuseReadAheadKiB: 1024, nice: true };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = (): number => {
      const n = Number(argv[++i]);
      if (!Number.isInteger(n) || n <= 0) throw new Error(`${a} needs a positive integer`);
      return n;
    };
    if (a === '--reps') args.reps = value();
    else if (a === '--size') args.sizeBytes = value() * MiB;
    else if (a === '--no-sweep') args.sweep = false;
    else if (a === '--profile') args.profile = true;
    else if (a === '--keep') args.keep = true;
    else if (a === '--fuse-read-ahead') args.fuseReadAheadKiB = value();
    else if (a === '--no-nice') args.nice = false;
    else throw new Error(`unknown argument ${a}; use --reps N, --size MiB, --no-sweep, --profile, --keep, --fuse-read-ahead KiB, --no-nice`);
  }
  return args;
}

/** One series of repeated measurements. */
interface Series {
  runsMBps: number[];
  medianMBps: number;
  medianSeconds: number;
  /** CPU seconds per run, by process (median); "other" is the rest of the machine. */
  cpu: Record<string, number>;
  /** Runs that started although the machine was still busy with other work. */
  noisyRuns: number;
}

class Recorder {
  private readonly runs = new Map<string, { r: ReadResult; cpu: Record<string, number>; quiet: boolean }[]>();
  add(name: string, r: ReadResult, cpu: Record<string, number> = {}, quiet?: QuietResult): void {
    const list = this.runs.get(name) ?? [];
    list.push({ r, cpu, quiet: quiet?.quiet ?? true });
    this.runs.set(name, list);
  }
  series(name: string): Series {
    const list = this.runs.get(name) ?? [];
    const cpu: Record<string, number> = {};
    for (const key of new Set(list.flatMap((x) => Object.keys(x.cpu)))) cpu[key] = round(median(list.map((x) => x.cpu[key] ?? 0)), 2);
    return {
      runsMBps: list.map((x) => round(x.r.mbps, 1)),
      medianMBps: round(median(list.map((x) => x.r.mbps)), 1),
      medianSeconds: round(median(list.map((x) => x.r.seconds)), 3),
      cpu,
      noisyRuns: list.filter((x) => !x.quiet).length,
    };
  }
  names(): string[] {
    return [...this.runs.keys()];
  }
}

/** Measures `read`, once the machine is quiet, with the CPU the named processes spend meanwhile. */
async function withCpu(pids: Record<string, number>, read: () => Promise<ReadResult>): Promise<{ r: ReadResult; cpu: Record<string, number>; quiet: QuietResult }> {
  const quiet = await waitQuiet();
  const before: Record<string, number> = {};
  for (const [name, pid] of Object.entries(pids)) before[name] = await cpuSeconds(pid);
  const self = process.cpuUsage();
  const machineBefore = await machineBusySeconds();
  const r = await read();
  const machineAll = (await machineBusySeconds()) - machineBefore;
  const cpu: Record<string, number> = {};
  for (const [name, pid] of Object.entries(pids)) cpu[name] = (await cpuSeconds(pid)) - (before[name] ?? 0);
  const used = process.cpuUsage(self);
  cpu.bench = (used.user + used.system) / 1e6;
  if (r.readerCpu !== undefined) cpu.dd = r.readerCpu;
  // Everything else the machine did meanwhile: unrelated load.
  cpu.other = Math.max(0, machineAll - Object.values(cpu).reduce((a, b) => a + b, 0));
  return { r, cpu, quiet };
}

class Bench {
  readonly rec = new Recorder();
  readonly counters: Record<string, StatusCounters[]> = {};
  readonly live = new Set<Mount>();
  private mountSeq = 0;
  sha256 = '';

  constructor(
    readonly args: Args,
    readonly work: string,
    readonly azurite: RunningAzurite,
  ) {}

  note(key: string, c: StatusCounters): void {
    (this.counters[key] ??= []).push(c);
  }

  async sdk(concurrency: number, label = '', blockSize = SDK_BLOCK): Promise<void> {
    await dropCaches();
    let data: Buffer | undefined;
    const { r, cpu, quiet } = await withCpu({ azurite: this.azurite.pid }, async () => {
      const d = await sdkDownload(this.azurite.connectionString, CONTAINER, IMAGE, this.args.sizeBytes, blockSize, concurrency);
      data = d.data;
      return d;
    });
    if (data === undefined || crypto.createHash('sha256').update(data).digest('hex') !== this.sha256) {
      throw new Error('the SDK download differs from the blob written');
    }
    this.rec.add(`${label}sdk c${concurrency}`, r, cpu, quiet);
  }

  async bare(m: Mount): Promise<void> {
    await dropCaches();
    const { r, cpu, quiet } = await withCpu({ mount: m.pid }, () => timedRead(path.join(m.mountpoint, IMAGE), this.args.sizeBytes));
    this.rec.add('bare fuse', r, cpu, quiet);
  }

  async mountBlobdisk(settings: BlobdiskSettings, cacheDir: string, nodeArgs: string[] = []): Promise<Mount> {
    const mountpoint = path.join(this.work, `mnt-${++this.mountSeq}`);
    await fsp.mkdir(mountpoint, { recursive: true });
    const m = await Mount.blobdisk({
      mountpoint,
      cacheDir,
      dataDir: path.join(this.work, 'data'),
      connectionString: this.azurite.connectionString,
      container: CONTAINER,
      settings,
      nodeArgs,
      fuseReadAheadKiB: this.args.fuseReadAheadKiB,
    });
    this.live.add(m);
    return m;
  }

  async unmount(m: Mount): Promise<void> {
    this.live.delete(m);
    await m.stop();
    await fsp.rmdir(m.mountpoint).catch(() => undefined);
  }

  /** One timed read of the image through `m`, with the counters it moved. */
  async readThrough(m: Mount, name: string, drop = true): Promise<void> {
    if (drop) await dropCaches();
    const before = await m.status();
    const { r, cpu, quiet } = await withCpu({ mount: m.pid, azurite: this.azurite.pid }, () => timedRead(path.join(m.mountpoint, IMAGE), this.args.sizeBytes));
    this.rec.add(name, r, cpu, quiet);
    this.note(name, countersBetween(before, await m.status()));
  }

  /** Cold read with an empty cache dir; then, unless coldOnly, the warm reads. */
  async blobdiskRound(settings: BlobdiskSettings, label: string, coldOnly: boolean): Promise<void> {
    const cacheDir = path.join(this.work, 'cache');
    await fsp.rm(cacheDir, { recursive: true, force: true });
    let m = await this.mountBlobdisk(settings, cacheDir);
    try {
      await this.readThrough(m, `${label}cold`);
      if (coldOnly) return;
      await this.readThrough(m, `${label}warm same mount`);
      // Informational: the cache dir's files still in the page cache (the FUSE file itself
      // is not: libfuse opens without keep_cache, so the kernel drops its pages on open).
      await this.readThrough(m, `${label}warm same mount, cache dir in page cache`, false);
    } finally {
      await this.unmount(m);
    }
    m = await this.mountBlobdisk(settings, cacheDir);
    try {
      await this.readThrough(m, `${label}warm after remount`);
    } finally {
      await this.unmount(m);
    }
    // How fast the disk under the cache dir delivers the grain files, page cache dropped.
    await dropCaches();
    const files = await grainFiles(cacheDir);
    const bytes = (await Promise.all(files.map((f) => fsp.stat(f)))).reduce((s, st) => s + st.size, 0);
    const quiet = await waitQuiet();
    const cat = await run('sh', ['-c', 'cat "$@" > /dev/null', 'sh', ...files]);
    if (cat.code !== 0) throw new Error(`reading the grain files failed: ${cat.stderr}`);
    this.rec.add('disk: cat cache-dir grain files', { seconds: cat.ms / 1000, mbps: bytes / MB / (cat.ms / 1000) }, {}, quiet);
  }

  /** Checks that both mounts serve exactly the blob's bytes (cold and from the cache). */
  async verify(settings: BlobdiskSettings, bare: Mount): Promise<Record<string, boolean>> {
    const out: Record<string, boolean> = {};
    out.bare = (await sha256File(path.join(bare.mountpoint, IMAGE))) === this.sha256;
    const cacheDir = path.join(this.work, 'cache-verify');
    await fsp.rm(cacheDir, { recursive: true, force: true });
    const m = await this.mountBlobdisk(settings, cacheDir);
    try {
      await dropCaches();
      out.blobdiskCold = (await sha256File(path.join(m.mountpoint, IMAGE))) === this.sha256;
      await dropCaches();
      out.blobdiskWarm = (await sha256File(path.join(m.mountpoint, IMAGE))) === this.sha256;
    } finally {
      await this.unmount(m);
    }
    await fsp.rm(cacheDir, { recursive: true, force: true });
    return out;
  }

  /** Profiles two mounts under --cpu-prof over one cache dir: the first reads cold, the
   *  second reads warm after a remount and then once more (warm, same mount). */
  async profile(settings: BlobdiskSettings, outDir: string): Promise<Record<string, ProfileSummary>> {
    const out: Record<string, ProfileSummary> = {};
    const cacheDir = path.join(this.work, 'cache-profile');
    await fsp.rm(cacheDir, { recursive: true, force: true });
    const phases = [
      { name: 'cold', reads: ['profiled: cold'] },
      { name: 'warm', reads: ['profiled: warm after remount', 'profiled: warm same mount'] },
    ];
    for (const phase of phases) {
      const dir = path.join(outDir, phase.name);
      await fsp.rm(dir, { recursive: true, force: true });
      const m = await this.mountBlobdisk(settings, cacheDir, ['--cpu-prof', `--cpu-prof-dir=${dir}`]);
      try {
        for (const read of phase.reads) await this.readThrough(m, read);
      } finally {
        await this.unmount(m);
      }
      const file = await newestProfile(dir);
      if (file !== undefined) out[`${phase.name}: ${phase.reads.join(', then ')}`] = await summarizeProfile(file);
    }
    await fsp.rm(cacheDir, { recursive: true, force: true });
    return out;
  }
}

async function grainFiles(cacheDir: string): Promise<string[]> {
  const base = path.join(cacheDir, 'grains');
  const files: { file: string; image: number; idx: number }[] = [];
  for (const image of await fsp.readdir(base)) {
    for (const idx of await fsp.readdir(path.join(base, image))) {
      if (/^\d+$/.test(idx)) files.push({ file: path.join(base, image, idx), image: Number(image), idx: Number(idx) });
    }
  }
  return files.sort((a, b) => a.image - b.image || a.idx - b.idx).map((f) => f.file);
}

function machine(): Record<string, unknown> {
  const pkg = (name: string): string => {
    try {
      return (JSON.parse(fs.readFileSync(require.resolve(`${name}/package.json`), 'utf8')) as { version: string }).version;
    } catch {
      return '?';
    }
  };
  return {
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model ?? '?',
    memoryGiB: round(os.totalmem() / 1024 ** 3, 1),
    kernel: os.release(),
    node: process.version,
    azurite: pkg('azurite'),
    storageBlob: pkg('@azure/storage-blob'),
    fuseNative: pkg('fuse-native'),
  };
}

const ratio = (a: number, b: number): number => round(a / b, 3);

/** CPU seconds a read took in all its own processes (without unrelated load). */
const cpuOf = (x: Series): number => Object.entries(x.cpu).reduce((sum, [k, v]) => (k === 'other' ? sum : sum + v), 0);

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  if (process.getuid?.() !== 0) throw new Error('the benchmark needs root: it mounts FUSE filesystems and drops the page cache');
  if (!fs.existsSync('/dev/fuse')) throw new Error('/dev/fuse is missing');

  // Children (Azurite, mounts, readers) inherit the priority.
  if (args.nice) os.setPriority(-10);
  const work = await fsp.mkdtemp(path.join(os.tmpdir(), 'blobdisk-bench-'));
  const outDir = path.join(ROOT, '.bench');
  await fsp.mkdir(outDir, { recursive: true });
  let azurite: RunningAzurite | undefined;
  let bench: Bench | undefined;
  let bare: Mount | undefined;
  const cleanup = async (): Promise<void> => {
    for (const m of bench?.live ?? []) await m.kill();
    await bare?.kill();
    await azurite?.stop();
    if (!args.keep) await fsp.rm(work, { recursive: true, force: true });
  };
  let interrupted = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    // Stay for the cleanup even when the signal comes again (Ctrl-C twice, kill twice).
    if (interrupted) return;
    interrupted = true;
    process.stderr.write(`bench: ${signal}; unmounting and stopping Azurite\n`);
    void cleanup().finally(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  const log = (line: string): void => void process.stderr.write(`bench: ${line}\n`);
  const t0 = Date.now();
  try {
    azurite = await startAzurite({ inMemory: true });
    log(`Azurite (in memory) at ${azurite.endpoint}, pid ${azurite.pid}`);
    bench = new Bench(args, work, azurite);

    const data = crypto.randomBytes(args.sizeBytes);
    bench.sha256 = crypto.createHash('sha256').update(data).digest('hex');
    await writePageBlob(azurite.connectionString, CONTAINER, IMAGE, data);
    const dataFile = path.join(work, 'data.bin');
    await fsp.writeFile(dataFile, data);
    log(`wrote ${args.sizeBytes / MiB} MiB of random data to page blob ${CONTAINER}/${IMAGE}`);

    const bareMnt = path.join(work, 'bare');
    await fsp.mkdir(bareMnt);
    bare = await Mount.bare(bareMnt, dataFile, IMAGE, args.fuseReadAheadKiB);

    const settings: BlobdiskSettings = { grainSize: DEFAULTS.grainSize, readAhead: DEFAULTS.readAheadGrains * DEFAULTS.grainSize, cacheSize: CACHE_SIZE };
    for (let rep = 1; rep <= args.reps; rep++) {
      log(`main round ${rep}/${args.reps} (grain ${sizeFlag(settings.grainSize)}, read-ahead ${sizeFlag(settings.readAhead)})`);
      for (const c of SDK_CONCURRENCY) await bench.sdk(c);
      for (const c of SDK_CONCURRENCY) await bench.sdk(c, `${sizeFlag(SDK_BLOCK_LARGE)} `, SDK_BLOCK_LARGE);
      await bench.bare(bare);
      await bench.blobdiskRound(settings, '', false);
    }

    const verified = await bench.verify(settings, bare);
    log(`checksums: ${JSON.stringify(verified)}`);

    const sweep: { grainSize: number; readAhead: number; series: Series; counters: StatusCounters | undefined }[] = [];
    if (args.sweep) {
      const configs = SWEEP_GRAINS.flatMap((grainSize) => SWEEP_READ_AHEADS.map((readAhead) => ({ grainSize, readAhead, cacheSize: CACHE_SIZE })));
      for (let rep = 1; rep <= args.reps; rep++) {
        log(`sweep round ${rep}/${args.reps}`);
        await bench.sdk(8, 'sweep ');
        for (const c of configs) await bench.blobdiskRound(c, `sweep ${sizeFlag(c.grainSize)}/${sizeFlag(c.readAhead)} `, true);
      }
      for (const c of configs) {
        const key = `sweep ${sizeFlag(c.grainSize)}/${sizeFlag(c.readAhead)} cold`;
        sweep.push({ grainSize: c.grainSize, readAhead: c.readAhead, series: bench.rec.series(key), counters: bench.counters[key]?.at(-1) });
      }
    }

    const profiles = args.profile ? await bench.profile(settings, path.join(outDir, 'profiles')) : undefined;
    await bare.stop();
    bare = undefined;

    // ---- report ----
    const s = (name: string): Series => bench!.rec.series(name);
    const sdkBest = Math.max(...SDK_CONCURRENCY.map((c) => s(`sdk c${c}`).medianMBps));
    const sdkLarge = SDK_CONCURRENCY.map((c) => s(`${sizeFlag(SDK_BLOCK_LARGE)} sdk c${c}`)).reduce((a, b) => (b.medianMBps > a.medianMBps ? b : a));
    const sdkLargeBest = sdkLarge.medianMBps;
    // The most any FUSE filesystem could do here if it fetched like the SDK with large blocks
    // and served like the bare one, doing nothing else: the CPU both take (all their
    // processes), spread over every core with nothing lost to waiting.
    const ceilingMBps = args.sizeBytes / MB / ((cpuOf(sdkLarge) + cpuOf(s('bare fuse'))) / os.cpus().length);
    const bareMBps = s('bare fuse').medianMBps;
    const cold = s('cold').medianMBps;
    const ratios = {
      coldVsSdkBest: ratio(cold, sdkBest),
      coldVsSdkC4: ratio(cold, s('sdk c4').medianMBps),
      coldVsSdkC8: ratio(cold, s('sdk c8').medianMBps),
      // The SDK asking for ranges as large as blobdisk's largest GET.
      coldVsSdkLargeBlocksBest: ratio(cold, sdkLargeBest),
      ceilingVsSdkLargeBlocks: ratio(ceilingMBps, sdkLargeBest),
      coldVsCeiling: ratio(cold, ceilingMBps),
      warmSameMountVsBare: ratio(s('warm same mount').medianMBps, bareMBps),
      warmAfterRemountVsBare: ratio(s('warm after remount').medianMBps, bareMBps),
      warmSameMountPageCachedVsBare: ratio(s('warm same mount, cache dir in page cache').medianMBps, bareMBps),
      // The same read with the grain files coming from the local disk, against how fast
      // the disk delivers them to cat: 1 is the disk's speed.
      warmSameMountVsDisk: ratio(s('warm same mount').medianMBps, s('disk: cat cache-dir grain files').medianMBps),
      // Less sensitive to unrelated load than wall time: on a machine where the read is
      // CPU-bound, throughput goes as the inverse of the CPU it takes.
      cpuColdVsSdkC8: ratio(cpuOf(s('sdk c8')), cpuOf(s('cold'))),
      cpuWarmSameMountVsBare: ratio(cpuOf(s('bare fuse')), cpuOf(s('warm same mount, cache dir in page cache'))),
    };
    const results = {
      startedAt: new Date(t0).toISOString(),
      durationSeconds: Math.round((Date.now() - t0) / 1000),
      machine: machine(),
      method: {
        blobBytes: args.sizeBytes,
        blob: `${CONTAINER}/${IMAGE}, page blob, every page written with random data`,
        azurite: 'in memory, 127.0.0.1, same machine',
        reps: args.reps,
        reader: 'dd if=<file> of=/dev/null bs=1M in a child process; wall time from spawn to exit',
        pageCache: 'echo 3 > /proc/sys/vm/drop_caches before every measurement (except where named)',
        sdk: `BlobClient.downloadToBuffer into a preallocated buffer, blockSize ${sizeFlag(SDK_BLOCK)} (its default) and ${sizeFlag(SDK_BLOCK_LARGE)}, concurrency ${SDK_CONCURRENCY.join(' and ')}`,
        bare: 'bench/barefs.ts: fuse-native, one file in a Buffer, fsname barefs,big_writes, maxRead 1 MiB, timeout false',
        mbps: 'MB/s = 10^6 bytes per second',
        priority: args.nice ? 'nice -10 for the benchmark and all its children' : 'default',
        fuseReadAheadKiB: args.fuseReadAheadKiB ?? 'kernel default (128)',
        quiet: 'each measurement waits (up to 20 s) until the machine is below 0.25 busy cores',
      },
      settings: {
        grainSize: settings.grainSize,
        readAhead: settings.readAhead,
        readAheadGrains: settings.readAhead / settings.grainSize,
        fetchConcurrency: DEFAULTS.fetchConcurrency,
        maxFetchBytes: Math.max(settings.grainSize, DEFAULTS.maxFetchBytes),
        cacheSize: settings.cacheSize,
      },
      targets: { coldVsSdk: TARGET_COLD, warmVsBare: TARGET_WARM },
      ratios,
      verified,
      series: Object.fromEntries(bench.rec.names().map((n) => [n, s(n)])),
      counters: bench.counters,
      sweep: sweep.map((x) => ({
        grainSize: x.grainSize,
        readAhead: x.readAhead,
        ...x.series,
        ratioVsSdk: ratio(x.series.medianMBps, s('sweep sdk c8').medianMBps),
        counters: x.counters,
      })),
      profiles,
    };
    await fsp.writeFile(path.join(outDir, 'results.json'), `${JSON.stringify(results, null, 2)}\n`);

    const mainRows = ['sdk c4', 'sdk c8', `${sizeFlag(SDK_BLOCK_LARGE)} sdk c4`, `${sizeFlag(SDK_BLOCK_LARGE)} sdk c8`, 'bare fuse', 'cold', 'warm same mount', 'warm after remount', 'warm same mount, cache dir in page cache', 'disk: cat cache-dir grain files'];
    const profRows = bench.rec.names().filter((n) => n.startsWith('profiled:'));
    const out: string[] = [];
    out.push(`blobdisk read benchmark: ${args.sizeBytes / MiB} MiB page blob, ${args.reps} runs each, medians; grain ${sizeFlag(settings.grainSize)}, read-ahead ${sizeFlag(settings.readAhead)} (${settings.readAhead / settings.grainSize} grains), fetch concurrency ${DEFAULTS.fetchConcurrency}, max GET ${sizeFlag(results.settings.maxFetchBytes)}, FUSE kernel read-ahead ${args.fuseReadAheadKiB ?? 128} KiB${args.nice ? ", nice -10" : ""}`);
    out.push('');
    out.push(
      table(
        ['measurement', 'runs MB/s', 'median MB/s', 'median s', 'CPU s (median)', 'noisy'],
        [...mainRows, ...profRows].map((n) => {
          const x = s(n);
          return [n, x.runsMBps.join(' / '), x.medianMBps, x.medianSeconds, Object.entries(x.cpu).map(([k, v]) => `${k} ${v}`).join(', '), x.noisyRuns];
        }),
      ),
    );
    out.push("CPU s: user+system seconds per run of the mount child, Azurite, this process (the SDK download runs in it), dd, and 'other' (unrelated work on the machine)");
    out.push("noisy: runs that started while other work kept the machine busier than 0.25 cores for 20 s");
    out.push('');
    out.push(
      table(
        ['ratio', 'value', 'target'],
        [
          ['cold / SDK (best of c4, c8)', ratios.coldVsSdkBest, `>= ${TARGET_COLD}`],
          ['cold / SDK c4', ratios.coldVsSdkC4, ''],
          ['cold / SDK c8', ratios.coldVsSdkC8, ''],
          [`cold / SDK, ${sizeFlag(SDK_BLOCK_LARGE)} blocks (best)`, ratios.coldVsSdkLargeBlocksBest, '(info)'],
          [`CPU ceiling (SDK ${sizeFlag(SDK_BLOCK_LARGE)} + bare FUSE) / SDK, ${sizeFlag(SDK_BLOCK_LARGE)} blocks`, ratios.ceilingVsSdkLargeBlocks, '(info)'],
          ['cold / CPU ceiling', ratios.coldVsCeiling, '(info)'],
          // Like for like: both serve from memory (blobdisk its grain files in the page cache).
          ['warm, cache dir page-cached / bare', ratios.warmSameMountPageCachedVsBare, `>= ${TARGET_WARM}`],
          ['warm same mount / bare FUSE', ratios.warmSameMountVsBare, '(info: disk)'],
          ['warm same mount / disk (cat)', ratios.warmSameMountVsDisk, '(info)'],
          ['warm after remount / bare FUSE', ratios.warmAfterRemountVsBare, '(info: disk, checks)'],
          ['CPU: SDK c8 / cold (inverse CPU)', ratios.cpuColdVsSdkC8, '(info)'],
          ['CPU: bare / warm page-cached', ratios.cpuWarmSameMountVsBare, '(info)'],
        ],
      ),
    );
    out.push('');
    const counterRows = ['cold', 'warm same mount', 'warm after remount'].map((n) => {
      const c = bench!.counters[n]?.at(-1);
      return [n, c?.requests ?? '-', c?.fetches ?? '-', c?.readAheadFetches ?? '-', c?.misses ?? '-', c?.hits ?? '-', c ? round(c.bytesDown / MiB, 1) : '-'];
    });
    out.push(table(['counters (last run)', 'requests', 'fetches', 'read-ahead', 'misses', 'hits', 'MiB down'], counterRows));
    for (const n of ['warm same mount', 'warm after remount']) {
      const down = Math.max(0, ...(bench.counters[n] ?? []).map((c) => c.bytesDown));
      if (down > 0) out.push(`WARNING: "${n}" fetched ${round(down / MiB, 1)} MiB from Azure: the cache was not reused, so that read was not warm`);
    }
    if (sweep.length > 0) {
      out.push('');
      out.push(`sweep, cold read (SDK c8 measured in the sweep rounds: ${s('sweep sdk c8').runsMBps.join(' / ')}, median ${s('sweep sdk c8').medianMBps} MB/s)`);
      out.push(
        table(
          ['grain', 'read-ahead', 'runs MB/s', 'median MB/s', 'ratio vs SDK c8', 'fetches', 'read-ahead fetches', 'mount CPU s', 'all CPU s'],
          sweep.map((x) => [
            sizeFlag(x.grainSize),
            sizeFlag(x.readAhead),
            x.series.runsMBps.join(' / '),
            x.series.medianMBps,
            ratio(x.series.medianMBps, s('sweep sdk c8').medianMBps),
            x.counters?.fetches ?? '-',
            x.counters?.readAheadFetches ?? '-',
            x.series.cpu.mount ?? '-',
            round(cpuOf(x.series), 2),
          ]),
        ),
      );
    }
    if (profiles) {
      for (const [phase, p] of Object.entries(profiles)) {
        out.push('');
        out.push(`CPU profile of the mount, ${phase} (${p.totalMs} ms sampled; whole process life)`);
        out.push(table(['area', 'self ms', '%'], p.byArea.slice(0, 10).map((e) => [e.name, e.ms, e.percent])));
        out.push(table(['function', 'self ms', '%'], p.topFunctions.slice(0, 12).map((e) => [e.name, e.ms, e.percent])));
        out.push(table(['blobdisk function (inclusive)', 'ms', '%'], p.blobdiskInclusive.slice(0, 12).map((e) => [e.name, e.ms, e.percent])));
      }
    }
    out.push('');
    out.push(`checksums match: ${Object.entries(verified).map(([k, v]) => `${k} ${v ? 'yes' : 'NO'}`).join(', ')}`);
    out.push(`results: ${path.relative(ROOT, path.join(outDir, 'results.json'))} (${results.durationSeconds} s)`);
    process.stdout.write(`${out.join('\n')}\n`);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await cleanup();
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`bench: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exitCode = 1;
});
