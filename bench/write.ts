/* The write benchmark (issue: write-behind). In one run on this machine, as ratios against
 * baselines measured in the same run:
 *   1. sequential write acknowledged by blobdisk vs the bare in-memory FUSE filesystem, of a
 *      new file and overwriting it in place, the two sides interleaved
 *   2. drain rate of a flush (the request `blobdisk flush` sends) vs a parallel SDK Put Page of
 *      the same bytes, interleaved
 *   3. fio 4 KiB random writes for 20 s: IOPS, and bytes uploaded per byte written
 *   4. bytes uploaded for `truncate -s 10G` (none) and for mkfs.ext4 of it
 * Writes .bench/write.json. Run: npm run bench (after the read benchmark) or
 * node dist/bench/write.js. With --profile it measures nothing of the above: it writes
 * 2 x 256 MiB through a mount under node --cpu-prof and drains them with `blobdisk flush`,
 * and prints where the mount's time goes in each of the two phases (profiles in
 * .bench/profiles/write/). */

import { BlobServiceClient } from '@azure/storage-blob';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startAzurite } from '../lib/azurite';
import { controlRequest } from '../lib/control';
import { Daemon, MB, MiB, median, round, run, runOk, table } from './lib';
import { ProfileSummary, newestProfile, summarizeProfile } from './profile';

const ROOT = path.resolve(__dirname, '..', '..');
const BIN = path.join(ROOT, 'bin', 'blobdisk');
const SIZE = 256 * MiB;
const REPEAT = 3;

async function status(mnt: string): Promise<{ bytesUp: number; totals: { bytesUp: number; bytesCleared: number } }> {
  const r = await runOk(process.execPath, [BIN, 'status', mnt, '--json']);
  return JSON.parse(r.stdout) as { bytesUp: number; totals: { bytesUp: number; bytesCleared: number } };
}

async function mountBlobdisk(mnt: string, cs: string, cacheDir: string, extra: string[] = [], nodeArgs: string[] = []): Promise<Daemon> {
  fs.mkdirSync(mnt, { recursive: true });
  return Daemon.start(
    'blobdisk',
    process.execPath,
    [...nodeArgs, BIN, 'mount', mnt, '--connection-string', cs, '--container', 'bench', '--cache-dir', cacheDir, '--log-level', 'warn', ...extra],
    /blobdisk: mounted /,
    process.env,
  );
}

/** The SDK's own parallel Put Page (4 MiB, 8 in flight) of `data` into a new page blob, in MB/s. */
async function sdkPutPages(service: BlobServiceClient, name: string, data: Buffer): Promise<number> {
  const client = service.getContainerClient('bench').getPageBlobClient(name);
  await client.create(data.length);
  const started = process.hrtime.bigint();
  const parts = Array.from({ length: Math.ceil(data.length / (4 * MiB)) }, (_, k) => k);
  let next = 0;
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      while (next < parts.length) {
        const k = parts[next++] as number;
        const piece = data.subarray(k * 4 * MiB, (k + 1) * 4 * MiB);
        await client.uploadPages(piece, k * 4 * MiB, piece.length);
      }
    }),
  );
  return data.length / MB / (Number(process.hrtime.bigint() - started) / 1e9);
}

async function ddWrite(file: string, source: string, extra: string[] = []): Promise<number> {
  const r = await runOk('dd', [`if=${source}`, `of=${file}`, 'bs=1M', ...extra], { timeoutMs: 600_000 });
  return SIZE / MB / (r.ms / 1000);
}

/** The monotonic clock in µs, as V8 stamps profile samples. */
const nowUs = (): number => Number(process.hrtime.bigint() / 1000n);

function printProfile(phase: string, p: ProfileSummary): void {
  const rows = (list: ProfileSummary['byArea']): string[][] => list.map((e) => [e.name, String(e.ms), `${e.percent} %`]);
  process.stdout.write(`\nCPU profile of the mount, ${phase} (${p.totalMs} ms sampled)\n`);
  process.stdout.write(`${table(['area', 'ms', 'share'], rows(p.byArea))}\n\n`);
  process.stdout.write(`${table(['function (self)', 'ms', 'share'], rows(p.topFunctions))}\n\n`);
  process.stdout.write(`${table(['blobdisk function (inclusive)', 'ms', 'share'], rows(p.blobdiskInclusive))}\n`);
}

/** Sequential writes and their drain through one mount under --cpu-prof, each phase summarized apart. */
async function profileWrites(work: string, source: string, cs: string): Promise<void> {
  const dir = path.join(ROOT, '.bench', 'profiles', 'write');
  fs.rmSync(dir, { recursive: true, force: true });
  const mnt = path.join(work, 'mnt-profile');
  const m = await mountBlobdisk(mnt, cs, path.join(work, 'cache-profile'), ['--write-back-delay', '3600'], ['--cpu-prof', `--cpu-prof-dir=${dir}`]);
  let write = { fromUs: 0, toUs: 0 };
  let drain = { fromUs: 0, toUs: 0 };
  try {
    const rates: number[] = [];
    write = { fromUs: nowUs(), toUs: 0 };
    for (let i = 0; i < 2; i++) rates.push(await ddWrite(path.join(mnt, `profiled-${i}.img`), source));
    write = { ...write, toUs: nowUs() };
    drain = { fromUs: nowUs(), toUs: 0 };
    await runOk(process.execPath, [BIN, 'flush', mnt], { timeoutMs: 600_000 });
    drain = { ...drain, toUs: nowUs() };
    process.stdout.write(`profiled: writes ${rates.map((r) => round(r, 1)).join(', ')} MB/s (under the profiler), drain of ${(2 * SIZE) / MiB} MiB ${round((2 * SIZE) / MB / ((drain.toUs - drain.fromUs) / 1e6), 1)} MB/s\n`);
  } finally {
    await m.stop();
  }
  const file = await newestProfile(dir);
  if (file === undefined) throw new Error(`the mount left no profile in ${dir}`);
  fs.writeFileSync(path.join(dir, 'windows.json'), `${JSON.stringify({ file, write, drain })}\n`);
  printProfile('sequential writes', await summarizeProfile(file, 25, write));
  printProfile('drain by blobdisk flush', await summarizeProfile(file, 25, drain));
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  for (const a of args) if (a !== '--profile') throw new Error(`unknown argument ${a}; the only one is --profile`);
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'blobdisk-wbench-'));
  const source = path.join(work, 'source.bin');
  fs.writeFileSync(source, Buffer.concat(Array.from({ length: SIZE / MiB }, () => require('node:crypto').randomBytes(MiB))));
  const azurite = await startAzurite({ inMemory: true });
  const service = BlobServiceClient.fromConnectionString(azurite.connectionString);
  await service.getContainerClient('bench').create();
  const results: Record<string, unknown> = {};
  const daemons: Daemon[] = [];
  if (args.includes('--profile')) {
    try {
      await profileWrites(work, source, azurite.connectionString);
    } finally {
      await azurite.stop();
      await run('rm', ['-rf', work]);
    }
    return;
  }
  try {
    // 1. sequential writes: bare FUSE vs blobdisk (acknowledged, before any upload finishes),
    // interleaved so that the machine's drift hits both alike. A new file (dd truncates it:
    // fresh memory for the bare filesystem, fresh grains for blobdisk), then the same file
    // overwritten in place (conv=notrunc: memory, or cached grains, already there).
    const bareMnt = path.join(work, 'bare');
    fs.mkdirSync(bareMnt);
    const bare = await Daemon.start('barewrite', process.execPath, [path.join(__dirname, 'barewrite.js'), bareMnt], /barewrite: mounted/, process.env);
    daemons.push(bare);
    const mnt = path.join(work, 'mnt');
    const blob = await mountBlobdisk(mnt, azurite.connectionString, path.join(work, 'cache'));
    daemons.push(blob);
    const rates = { bareNew: [] as number[], bareOver: [] as number[], newFile: [] as number[], over: [] as number[] };
    for (let i = 0; i < REPEAT; i++) {
      rates.bareNew.push(await ddWrite(path.join(bareMnt, 'file'), source));
      rates.newFile.push(await ddWrite(path.join(mnt, `seq-${i}.img`), source));
      rates.bareOver.push(await ddWrite(path.join(bareMnt, 'file'), source, ['conv=notrunc']));
      rates.over.push(await ddWrite(path.join(mnt, `seq-${i}.img`), source, ['conv=notrunc']));
      await runOk(process.execPath, [BIN, 'flush', mnt], { timeoutMs: 600_000 });
    }
    await bare.stop();

    // 3. fio random 4 KiB writes for 20 s on a 1 GiB image, then the upload they caused
    await runOk('truncate', ['-s', '1G', path.join(mnt, 'fio.img')]);
    await runOk(process.execPath, [BIN, 'flush', mnt]);
    const upBefore = (await status(mnt)).totals;
    const fio = await runOk(
      'fio',
      ['--name=rand', `--filename=${path.join(mnt, 'fio.img')}`, '--rw=randwrite', '--bs=4k', '--size=1G', '--runtime=20', '--time_based', '--ioengine=psync', '--direct=1', '--output-format=json'],
      { timeoutMs: 120_000 },
    );
    const job = (JSON.parse(fio.stdout) as { jobs: { write: { iops: number; io_bytes: number } }[] }).jobs[0];
    await runOk(process.execPath, [BIN, 'flush', mnt], { timeoutMs: 600_000 });
    const upAfter = (await status(mnt)).totals;
    const fioUp = upAfter.bytesUp + upAfter.bytesCleared - upBefore.bytesUp - upBefore.bytesCleared;

    // 4. truncate -s 10G uploads nothing; mkfs.ext4 uploads little
    const t0 = (await status(mnt)).totals.bytesUp;
    await runOk('truncate', ['-s', '10G', path.join(mnt, 'fs.img')]);
    await runOk(process.execPath, [BIN, 'flush', mnt]);
    const t1 = (await status(mnt)).totals.bytesUp;
    await runOk('mkfs.ext4', ['-q', '-F', path.join(mnt, 'fs.img')], { timeoutMs: 300_000 });
    await runOk(process.execPath, [BIN, 'flush', mnt], { timeoutMs: 300_000 });
    const t2 = (await status(mnt)).totals.bytesUp;
    await blob.stop();

    // 2. Drain: a mount that holds uploads back, so `blobdisk flush` uploads all of it, each
    // time next to the SDK's own parallel Put Page of the same bytes.
    const held = await mountBlobdisk(mnt, azurite.connectionString, path.join(work, 'cache-held'), ['--write-back-delay', '3600']);
    daemons.push(held);
    const drainRates: number[] = [];
    const sdkRates: number[] = [];
    const data = fs.readFileSync(source);
    for (let i = 0; i < REPEAT; i++) {
      await ddWrite(path.join(mnt, `drain-${i}.img`), source);
      const before = (await status(mnt)).bytesUp;
      // The flush request `blobdisk flush` sends, from here: the drain alone, without the
      // 0.15-0.2 s a new process takes to start and load its modules.
      const started = process.hrtime.bigint();
      await controlRequest(mnt, { op: 'flush' });
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      drainRates.push(((await status(mnt)).bytesUp - before) / MB / seconds);
      sdkRates.push(await sdkPutPages(service, `sdk-${i}.img`, data));
    }

    await held.stop();

    const w = median(rates.newFile);
    const b = median(rates.bareNew);
    const wo = median(rates.over);
    const bo = median(rates.bareOver);
    const d = median(drainRates);
    const s = median(sdkRates);
    Object.assign(results, {
      sequentialWriteMBps: round(w, 1), bareFuseWriteMBps: round(b, 1), writeRatio: round(w / b),
      overwriteMBps: round(wo, 1), bareFuseOverwriteMBps: round(bo, 1), overwriteRatio: round(wo / bo), writeRuns: rates,
      drainMBps: round(d, 1), sdkPutPageMBps: round(s, 1), drainRatio: round(d / s), drainRuns: drainRates, sdkRuns: sdkRates,
      fioIops: round(job?.write.iops ?? 0, 0), fioBytesWritten: job?.write.io_bytes ?? 0, fioBytesUploaded: fioUp,
      uploadAmplification: round(fioUp / Math.max(1, job?.write.io_bytes ?? 1)),
      truncate10GBytesUp: t1 - t0, mkfsBytesUp: t2 - t1,
    });
    process.stdout.write(
      `${table(
        ['measure', 'blobdisk', 'baseline', 'ratio'],
        [
          ['sequential write of a new file, MB/s (256 MiB, dd bs=1M)', round(w, 1), `${round(b, 1)} bare FUSE`, round(w / b)],
          ['sequential overwrite in place, MB/s (conv=notrunc)', round(wo, 1), `${round(bo, 1)} bare FUSE`, round(wo / bo)],
          ['drain by a flush request, MB/s', round(d, 1), `${round(s, 1)} SDK Put Page x8`, round(d / s)],
          ['fio randwrite 4k, 20 s, IOPS', round(job?.write.iops ?? 0, 0), '-', '-'],
          ['bytes uploaded / bytes written by fio', `${round(fioUp / MiB, 1)} MiB / ${round((job?.write.io_bytes ?? 0) / MiB, 1)} MiB`, '-', round(fioUp / Math.max(1, job?.write.io_bytes ?? 1))],
          ['bytes uploaded by truncate -s 10G', t1 - t0, '-', '-'],
          ['bytes uploaded by mkfs.ext4 of it', `${round((t2 - t1) / MiB, 1)} MiB`, '-', '-'],
        ],
      )}\n`,
    );
    fs.mkdirSync(path.join(ROOT, '.bench'), { recursive: true });
    fs.writeFileSync(path.join(ROOT, '.bench', 'write.json'), `${JSON.stringify(results, null, 2)}\n`);
  } finally {
    for (const dmn of daemons) if (dmn.running) await dmn.stop();
    await azurite.stop();
    await run('rm', ['-rf', work]);
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`write benchmark failed: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exitCode = 1;
});
