/* The peers benchmark (issue 13): blobdisk side by side with `rclone mount
 * --vfs-cache-mode full` on the same Azurite and with the bare fuse-native filesystem
 * (barerw.ts, files in memory), the same files and fio jobs for every column, in
 * interleaved rounds (the column order rotates each round), medians reported:
 *   fio 4k randread O_DIRECT psync, 1 and 4 jobs (warm); fio 4k randwrite O_DIRECT 1 job
 *   with end_fsync, and the bytes it made the mount send to Azurite per unique byte
 *   written (counted by a TCP proxy in front of Azurite); cold sequential read (dd bs=1M,
 *   empty cache); warm sequential read (page cache dropped); acknowledged sequential write;
 *   a cold boot-style trace; peak RSS of each mount process (VmHWM); mount time and first
 *   access of a small and of a 1 TiB sparse page blob, and peak RSS serving random reads
 *   across the 1 TiB one; the SDK's streamed whole-blob GET and its parallel download.
 * Every mount is a child process, always unmounted, also on failure. blobdisk mounting as
 * root raises its mount's kernel read-ahead to 1 MiB; the bench gives rclone's and the bare
 * filesystem's mounts the same (root may do that for any FUSE mount), so that no column
 * reads sequentially with the kernel's 128 KiB.
 *
 *   node dist/bench/peers.js [--reps N] [--quick]
 * Results: tables and a one-line summary of the ratios on stdout, JSON in .bench/peers.json. */

import { BlobServiceClient, ContainerSASPermissions, StorageSharedKeyCredential, generateBlobSASQueryParameters } from '@azure/storage-blob';
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { AZURITE_ACCOUNT, startAzurite, type RunningAzurite } from '../lib/azurite';
import { sdkDownload, writePageBlob } from './azure';
import { Daemon, MB, MiB, cpuSeconds, dropCaches, ensureUnmounted, median, mountedPaths, round, run, runOk, setFuseReadAhead, table, timedRead, waitQuiet } from './lib';

const ROOT = path.resolve(__dirname, '..', '..');
const BLOBDISK = path.join(ROOT, 'bin', 'blobdisk');
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;
const SIZE = 256 * MiB;
const ALL_COLUMNS = ['blobdisk', 'rclone', 'bare', 'base'] as const;
type Column = (typeof ALL_COLUMNS)[number];
/** The columns of this run (`base`: blobdisk from another checkout, see --base). */
let COLUMNS: Column[] = ['blobdisk', 'rclone', 'bare'];
/** bin/blobdisk of the `base` column. */
let BASE_BIN = '';

interface Args {
  reps: number;
  quick: boolean;
  /** Only the per-request rows (fio and CPU per request): no trace, sequential write or 1 TiB blob. */
  fioOnly: boolean;
}

function parseArgs(argv: string[]): Args {
  const args: Args = { reps: 3, quick: false, fioOnly: false };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--quick') args.quick = true;
    else if (argv[i] === '--reps') args.reps = Number(argv[++i]);
    else if (argv[i] === '--fio-only') args.fioOnly = true;
    else if (argv[i] === '--columns') COLUMNS = (argv[++i] ?? '').split(',') as Column[];
    else if (argv[i] === '--base') BASE_BIN = path.resolve(argv[++i] ?? '');
    else throw new Error(`unknown argument ${argv[i]}; takes --reps N, --quick, --fio-only, --columns a,b and --base BIN`);
  }
  for (const c of COLUMNS) if (!ALL_COLUMNS.includes(c)) throw new Error(`unknown column ${c}`);
  if (COLUMNS.includes('base') && !BASE_BIN) throw new Error('the base column needs --base path/to/bin/blobdisk');
  if (args.quick && !argv.includes('--reps')) args.reps = 1;
  if (!(args.reps >= 1)) throw new Error('--reps takes a number ≥ 1');
  return args;
}

/** The sizes of the work, full or --quick. */
function plan(quick: boolean) {
  return {
    fioSeconds: quick ? 3 : 10,
    randWriteBytes: quick ? 16 * MiB : 64 * MiB,
    traceCount: quick ? 300 : 1500,
    traceSpan: GiB,
    traceSeqAt: 768 * MiB,
    traceSeq: quick ? 32 * MiB : 128 * MiB,
    hugeSeconds: quick ? 3 : 10,
  };
}

/** Counts the bytes clients send to Azurite through it (requests with their bodies). */
class CountingProxy {
  sent = 0;
  private constructor(
    private readonly server: net.Server,
    readonly port: number,
  ) {}

  static async start(target: number): Promise<CountingProxy> {
    let proxy: CountingProxy | undefined;
    const server = net.createServer((client) => {
      const upstream = net.connect(target, '127.0.0.1');
      client.on('data', (d: Buffer) => {
        if (proxy) proxy.sent += d.length;
      });
      client.pipe(upstream);
      upstream.pipe(client);
      const end = (): void => {
        client.destroy();
        upstream.destroy();
      };
      client.on('error', end).on('close', end);
      upstream.on('error', end).on('close', end);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    proxy = new CountingProxy(server, (server.address() as net.AddressInfo).port);
    return proxy;
  }

  stop(): Promise<void> {
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

/** A SAS URL of `container` under the endpoint, good for a day, every right. */
function containerSasUrl(endpoint: { blobEndpoint: string; key: string }, container: string): string {
  const credential = new StorageSharedKeyCredential(AZURITE_ACCOUNT, endpoint.key);
  const permissions = ContainerSASPermissions.parse('racwdl');
  const sas = generateBlobSASQueryParameters({ containerName: container, permissions, expiresOn: new Date(Date.now() + 86_400_000) }, credential);
  return `${endpoint.blobEndpoint}/${container}?${sas.toString()}`;
}

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

async function waitMounted(mnt: string, daemon: Daemon, timeoutMs = 60_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await mountedPaths()).has(mnt)) {
    if (!daemon.running) throw new Error(`${daemon.name} exited before mounting: ${daemon.output.trim().slice(-500)}`);
    if (Date.now() > until) throw new Error(`${daemon.name} did not mount ${mnt} in time`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** One mount of one column, a child process; `stop` always leaves nothing mounted. */
class ColumnMount {
  private constructor(
    readonly column: Column,
    readonly mnt: string,
    readonly daemon: Daemon,
  ) {}

  /** From spawn until the kernel lists the mount. */
  mountMs = 0;

  static live = new Set<ColumnMount>();

  static async start(column: Column, mnt: string, work: string, endpoint: { connectionString: string; blobEndpoint: string; key: string }, container: string, bare: readonly string[]): Promise<ColumnMount> {
    await fsp.mkdir(mnt, { recursive: true });
    const cache = await fsp.mkdtemp(path.join(work, `cache-${column}-`));
    const started = process.hrtime.bigint();
    let daemon: Daemon;
    if (column === 'blobdisk' || column === 'base') {
      // The script itself, as a user runs it: its first line gives Node its flags.
      const args = ['mount', mnt, '--container', container, '--cache-dir', cache, '--data-dir', cache, '--cache-size', '8G', '--log-level', 'warn'];
      daemon = await Daemon.start('blobdisk mount', column === 'base' ? BASE_BIN : BLOBDISK, args, /^blobdisk: mounted /m, { ...process.env, AZURE_STORAGE_CONNECTION_STRING: endpoint.connectionString });
    } else if (column === 'rclone') {
      const port = await freePort();
      const env = {
        ...process.env,
        RCLONE_CONFIG: path.join(cache, 'none.conf'),
        RCLONE_CONFIG_AZ_TYPE: 'azureblob',
        // rclone 1.60 takes `endpoint` as a host suffix (https://ACCOUNT.ENDPOINT), which
        // cannot name Azurite's http://127.0.0.1:PORT/ACCOUNT: a container SAS URL can.
        RCLONE_CONFIG_AZ_SAS_URL: containerSasUrl(endpoint, container),
      };
      const args = ['mount', `az:${container}`, mnt, '--vfs-cache-mode', 'full', '--cache-dir', cache, '--vfs-write-back', '1s', '--rc', '--rc-addr', `127.0.0.1:${port}`, '--rc-no-auth'];
      daemon = await Daemon.start('rclone mount', 'rclone', args, /Serving remote control on/, env);
    } else {
      daemon = await Daemon.start('barerw', process.execPath, [path.join(__dirname, 'barerw.js'), mnt, ...bare], /^barerw: mounted /m, process.env);
    }
    const m = new ColumnMount(column, mnt, daemon);
    ColumnMount.live.add(m);
    try {
      await waitMounted(mnt, daemon);
      // What blobdisk does for its own mount as root (lib/fuse/session.ts).
      if (column === 'rclone' || column === 'bare') await setFuseReadAhead(mnt, 1024);
    } catch (e) {
      await m.stop().catch(() => undefined);
      throw e;
    }
    m.mountMs = Number(process.hrtime.bigint() - started) / 1e6;
    return m;
  }

  /** Peak resident memory of the mount process so far, in MiB. */
  async peakRssMiB(): Promise<number> {
    const text = await fsp.readFile(`/proc/${this.daemon.pid}/status`, 'utf8').catch(() => '');
    const m = /^VmHWM:\s+(\d+) kB/m.exec(text);
    return m ? Number(m[1]) / 1024 : NaN;
  }

  cpu(): Promise<number> {
    return cpuSeconds(this.daemon.pid);
  }

  /** SIGTERM (blobdisk drains first), then make sure nothing stays mounted. */
  async stop(): Promise<void> {
    ColumnMount.live.delete(this);
    await this.daemon.stop(120_000).catch(() => undefined);
    await ensureUnmounted(this.mnt).catch(() => undefined);
  }
}

interface FioResult {
  iops: number;
  ios: number;
}

async function fio(file: string, rw: 'randread' | 'randwrite', jobs: number, extra: string[], timeoutMs = 600_000): Promise<FioResult> {
  const args = [`--name=${rw}`, `--filename=${file}`, `--rw=${rw}`, '--bs=4k', '--direct=1', '--ioengine=psync', `--numjobs=${jobs}`, '--group_reporting', '--output-format=json', ...extra];
  const r = await runOk('fio', args, { timeoutMs });
  const json = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as { jobs: { read: { iops: number; total_ios: number }; write: { iops: number; total_ios: number } }[] };
  const side = rw === 'randread' ? json.jobs[0]?.read : json.jobs[0]?.write;
  if (!side) throw new Error(`fio printed no ${rw} result`);
  return { iops: side.iops, ios: side.total_ios };
}

async function firstAccessMs(file: string, size: number): Promise<number> {
  const block = Math.floor((size / 4096) * 0.37);
  const r = await runOk('dd', [`if=${file}`, 'of=/dev/null', 'bs=4k', 'count=1', `skip=${block}`, 'iflag=direct']);
  return r.ms;
}

/** Streams the whole blob in one GET, counting the bytes (the backend's sequential ceiling). */
async function sdkStream(cs: string, container: string, name: string, size: number): Promise<number> {
  const blob = BlobServiceClient.fromConnectionString(cs).getContainerClient(container).getBlobClient(name);
  const started = process.hrtime.bigint();
  const res = await blob.download(0);
  let n = 0;
  for await (const chunk of res.readableStreamBody as NodeJS.ReadableStream) n += (chunk as Buffer).length;
  if (n !== size) throw new Error(`streamed GET returned ${n} bytes, expected ${size}`);
  return size / MB / (Number(process.hrtime.bigint() - started) / 1e9);
}

type Row = Record<string, number>;

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const p = plan(args.quick);
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'blobdisk-peers-'));
  const cleanup = async (): Promise<void> => {
    for (const m of [...ColumnMount.live]) await m.stop();
  };
  process.once('SIGINT', () => void cleanup().then(() => process.exit(130)));
  let azurite: RunningAzurite | undefined;
  let proxy: CountingProxy | undefined;
  const results: Record<Column, Row[]> & { sdk: Row[]; quiet: number[] } = { blobdisk: [], rclone: [], bare: [], base: [], sdk: [], quiet: [] };
  try {
    // Three full rounds pass some gigabytes of blobs through Azurite's memory.
    azurite = await startAzurite({ inMemory: true, heapMiB: 12 * 1024 });
    proxy = await CountingProxy.start(azurite.port);
    const direct = { connectionString: azurite.connectionString, blobEndpoint: azurite.endpoint, key: azurite.accountKey };
    const viaProxy = {
      connectionString: azurite.connectionString.replace(`:${azurite.port}/`, `:${proxy.port}/`),
      blobEndpoint: azurite.endpoint.replace(`:${azurite.port}/`, `:${proxy.port}/`),
      key: azurite.accountKey,
    };
    const service = BlobServiceClient.fromConnectionString(azurite.connectionString);
    await service.getContainerClient('huge').create();

    // The data: the 256 MiB image, a sequential-write source, the trace image (the first GiB
    // three quarters written, in 4 MiB pieces) and a 1 TiB page blob with a few scattered writes.
    const data = crypto.randomBytes(SIZE);
    const dataFile = path.join(work, 'disk.bin');
    fs.writeFileSync(dataFile, data);
    await writePageBlob(azurite.connectionString, 'bench', 'disk.img', data);
    const traceSize = GiB + 256 * MiB;
    const traceFile = path.join(work, 'trace.bin');
    const traceData = Buffer.alloc(traceSize);
    const traceBlob = service.getContainerClient('bench').getPageBlobClient('trace.img');
    await traceBlob.create(traceSize);
    for (let at = 0; at < GiB; at += 4 * MiB) {
      if ((at / (4 * MiB)) % 4 === 3) continue;
      const piece = crypto.randomBytes(4 * MiB);
      piece.copy(traceData, at);
      await traceBlob.uploadPages(piece, at, piece.length);
    }
    fs.writeFileSync(traceFile, traceData);
    const huge = service.getContainerClient('huge').getPageBlobClient('huge.img');
    await huge.create(TiB);
    for (let i = 0; i < 256; i++) await huge.uploadPages(crypto.randomBytes(64 * 1024), Math.floor(Math.random() * (TiB / (64 * 1024))) * 64 * 1024, 64 * 1024);

    for (let round_ = 0; round_ < args.reps; round_++) {
      const order = COLUMNS.map((_, i) => COLUMNS[(i + round_) % COLUMNS.length] as Column);
      process.stdout.write(`round ${round_ + 1}/${args.reps}: ${order.join(', ')}\n`);
      const q = await waitQuiet(0.3, 500, 15_000);
      results.quiet.push(round(q.busyCores, 2));
      if (!q.quiet) process.stdout.write(`  machine busy: ${round(q.busyCores, 2)} cores used by others before this round\n`);
      const sdk = { streamMBps: await sdkStream(azurite.connectionString, 'bench', 'disk.img', SIZE), parallelMBps: (await sdkDownload(azurite.connectionString, 'bench', 'disk.img', SIZE, 4 * MiB, 4)).mbps };
      results.sdk.push(sdk);
      process.stdout.write(`  sdk: streamMBps=${round(sdk.streamMBps, 1)} parallelMBps=${round(sdk.parallelMBps, 1)}\n`);
      for (const col of order) {
        const row = await measureColumn(col, round_, work, direct, viaProxy, proxy, dataFile, traceFile, service, data, p, args.fioOnly);
        results[col].push(row);
        process.stdout.write(`  ${col}: ${Object.entries(row).map(([k, v]) => `${k}=${round(v, v < 10 ? 3 : 1)}`).join(' ')}\n`);
      }
    }
  } finally {
    await cleanup();
    for (const col of COLUMNS) await ensureUnmounted(path.join(work, `mnt-${col}`)).catch(() => undefined);
    await proxy?.stop();
    await azurite?.stop();
    await run('rm', ['-rf', work]);
  }
  report(results, args);
}

async function measureColumn(
  col: Column, r: number, work: string,
  direct: { connectionString: string; blobEndpoint: string; key: string },
  viaProxy: { connectionString: string; blobEndpoint: string; key: string },
  proxy: CountingProxy, dataFile: string, traceFile: string, service: BlobServiceClient, data: Buffer,
  p: ReturnType<typeof plan>, fioOnly: boolean,
): Promise<Row> {
  const row: Row = {};
  const mnt = path.join(work, `mnt-${col}`);
  const wName = `w-${col}-${r}.img`;
  // rclone writes only block blobs (a Put Block onto a page blob fails): its copy of the
  // random-write file is a block blob of the same bytes.
  if (col === 'rclone') await service.getContainerClient('bench').getBlockBlobClient(wName).uploadData(data, { blockSize: 4 * MiB, concurrency: 4 });
  else if (col !== 'bare') await writePageBlob(direct.connectionString, 'bench', wName, data);
  const bare = [`disk.img=${dataFile}`, `trace.img=${traceFile}`, `${wName}=${dataFile}`];

  // 1. Reads, the trace and the sequential write, on one mount with an empty cache.
  await dropCaches();
  let m = await ColumnMount.start(col, mnt, work, direct, 'bench', bare);
  try {
    if (col !== 'bare') row.mountMs = m.mountMs; // bare's start is the loading of its files
    row.firstAccessMs = await firstAccessMs(path.join(mnt, 'disk.img'), SIZE);
    await dropCaches();
    row.coldMBps = (await timedRead(path.join(mnt, 'disk.img'), SIZE)).mbps;
    await dropCaches();
    row.warmMBps = (await timedRead(path.join(mnt, 'disk.img'), SIZE)).mbps;
    const fioTime = ['--time_based', `--runtime=${p.fioSeconds}`, '--size=256M'];
    let cpu0 = await m.cpu();
    const rr1 = await fio(path.join(mnt, 'disk.img'), 'randread', 1, fioTime);
    row.randRead1Iops = rr1.iops;
    row.cpuUsPerRead = ((await m.cpu()) - cpu0) / rr1.ios * 1e6;
    row.randRead4Iops = (await fio(path.join(mnt, 'disk.img'), 'randread', 4, fioTime)).iops;
    if (!fioOnly) {
      await dropCaches();
      const t = await runOk(process.execPath, [path.join(__dirname, 'trace.js'), path.join(mnt, 'trace.img'), '7', String(p.traceCount), String(p.traceSpan), String(p.traceSeqAt), String(p.traceSeq)], { timeoutMs: 600_000 });
      const trace = JSON.parse(t.stdout) as { randomMs: number; seqMs: number; totalMs: number };
      row.traceMs = trace.totalMs;
      row.traceRandomMs = trace.randomMs;
      row.traceSeqMs = trace.seqMs;
      const dd = await runOk('dd', [`if=${dataFile}`, `of=${path.join(mnt, `s-${r}.img`)}`, 'bs=1M'], { timeoutMs: 600_000 });
      row.seqWriteMBps = SIZE / MB / (dd.ms / 1000);
    }
    // The bare filesystem has no Azure side: its random writes run here, uncounted.
    if (col === 'bare') {
      cpu0 = await m.cpu();
      const w = await fio(path.join(mnt, wName), 'randwrite', 1, ['--end_fsync=1', `--io_size=${p.randWriteBytes}`, '--size=256M']);
      row.randWriteIops = w.iops;
      row.cpuUsPerWrite = ((await m.cpu()) - cpu0) / w.ios * 1e6;
    }
    row.peakRssMiB = await m.peakRssMiB();
  } finally {
    await m.stop();
  }

  // 2. Random writes through the counting proxy: what reaches Azurite per unique byte written
  // (fio's random map writes every 4 KiB block at most once).
  if (col !== 'bare') {
    m = await ColumnMount.start(col, mnt, work, viaProxy, 'bench', bare);
    try {
      const sent0 = proxy.sent;
      const cpu0 = await m.cpu();
      const w = await fio(path.join(mnt, wName), 'randwrite', 1, ['--end_fsync=1', `--io_size=${p.randWriteBytes}`, '--size=256M']);
      row.randWriteIops = w.iops;
      row.cpuUsPerWrite = ((await m.cpu()) - cpu0) / w.ios * 1e6;
      if (col === 'rclone') {
        // rclone uploads after --vfs-write-back once the file is closed: wait until the proxy is quiet.
        let last = -1;
        for (let stable = 0; stable < 4; ) {
          await new Promise((res) => setTimeout(res, 1000));
          stable = proxy.sent === last ? stable + 1 : 0;
          last = proxy.sent;
        }
      }
      row.peakRssWriteMiB = await m.peakRssMiB();
      await m.stop(); // blobdisk drains everything dirty before it exits
      row.uploadedPerUnique = (proxy.sent - sent0) / p.randWriteBytes;
    } finally {
      await m.stop();
    }
    await service.getContainerClient('bench').getBlobClient(wName).deleteIfExists();
  }

  // 3. A 1 TiB sparse page blob: mount time, first access, peak RSS under random reads across it.
  if (fioOnly) return row;
  m = await ColumnMount.start(col, mnt, work, direct, 'huge', [`huge.img=${TiB}`]);
  try {
    if (col !== 'bare') row.hugeMountMs = m.mountMs;
    row.hugeFirstAccessMs = await firstAccessMs(path.join(mnt, 'huge.img'), TiB);
    // Bounded: rclone's 128 MiB chunk reads of the sparse blob once kept the in-memory
    // Azurite busy for over ten minutes (one read never came back), which stalled the run.
    const bound = (p.hugeSeconds + 90) * 1000;
    const h = await fio(path.join(mnt, 'huge.img'), 'randread', 1, ['--time_based', `--runtime=${p.hugeSeconds}`, '--size=1T', '--norandommap'], bound).catch((e: unknown) => {
      process.stdout.write(`  ${col}: random reads across 1 TiB did not finish in ${bound / 1000} s, left out (${(e as Error).message.slice(0, 120)})\n`);
      return undefined;
    });
    if (h) row.hugeRandReadIops = h.iops;
    row.hugePeakRssMiB = await m.peakRssMiB();
  } finally {
    await m.stop();
  }
  await service.getContainerClient('bench').getBlobClient(`s-${r}.img`).deleteIfExists();
  return row;
}

function report(results: Record<Column, Row[]> & { sdk: Row[]; quiet: number[] }, args: Args): void {
  const med = (rows: Row[], key: string): number => median(rows.map((x) => x[key]).filter((v): v is number => v !== undefined && Number.isFinite(v)));
  const keys = [
    ['randRead1Iops', 'fio 4k randread O_DIRECT 1 job, IOPS'],
    ['randRead4Iops', 'fio 4k randread O_DIRECT 4 jobs, IOPS'],
    ['randWriteIops', 'fio 4k randwrite O_DIRECT 1 job end_fsync, IOPS'],
    ['uploadedPerUnique', 'bytes sent to Azurite / unique bytes written'],
    ['cpuUsPerRead', 'mount CPU µs per 4k read (1 job)'],
    ['cpuUsPerWrite', 'mount CPU µs per 4k write'],
    ['coldMBps', 'cold sequential read dd bs=1M, MB/s'],
    ['warmMBps', 'warm sequential read (page cache dropped), MB/s'],
    ['seqWriteMBps', 'sequential write acknowledged, MB/s'],
    ['traceMs', 'boot-style trace, total ms'],
    ['traceRandomMs', '  of it random reads, ms'],
    ['traceSeqMs', '  of it sequential stretch, ms'],
    ['peakRssMiB', 'peak RSS, reads/trace/write mount, MiB'],
    ['peakRssWriteMiB', 'peak RSS, randwrite mount, MiB'],
    ['mountMs', 'mount time, 256 MiB blob container, ms'],
    ['firstAccessMs', 'first 4k read of the 256 MiB blob, ms'],
    ['hugeMountMs', 'mount time, 1 TiB blob container, ms'],
    ['hugeFirstAccessMs', 'first 4k read of the 1 TiB blob, ms'],
    ['hugeRandReadIops', 'random 4k reads across 1 TiB, IOPS'],
    ['hugePeakRssMiB', 'peak RSS serving 1 TiB random reads, MiB'],
  ] as const;
  const m = (col: Column, key: string): number => med(results[col], key);
  const rows = keys.map(([k, label]) => [label, ...COLUMNS.map((c) => (Number.isFinite(m(c, k)) ? String(round(m(c, k), m(c, k) < 10 ? 3 : 1)) : '—'))]);
  const stream = med(results.sdk, 'streamMBps');
  const parallel = med(results.sdk, 'parallelMBps');
  process.stdout.write(`\nmedians of ${args.reps} round(s)${args.quick ? ' (--quick)' : ''}\n${table(['measurement', ...COLUMNS], rows)}\n`);
  process.stdout.write(`SDK: one streamed whole-blob GET ${round(stream, 1)} MB/s, parallel download 4 MiB x4 ${round(parallel, 1)} MB/s\n`);
  const ratio = (a: number, b: number): string => (Number.isFinite(a / b) ? String(round(a / b, 2)) : '—');
  const b = (k: string): number => m(COLUMNS.includes('blobdisk') ? 'blobdisk' : 'base', k);
  const rc = (k: string): number => m('rclone', k);
  const bare = (k: string): number => m('bare', k);
  const summary = [
    `rr1 b/r ${ratio(b('randRead1Iops'), rc('randRead1Iops'))} b/bare ${ratio(b('randRead1Iops'), bare('randRead1Iops'))}`,
    `rr4 b/r ${ratio(b('randRead4Iops'), rc('randRead4Iops'))} b/bare ${ratio(b('randRead4Iops'), bare('randRead4Iops'))}`,
    `rw b/r ${ratio(b('randWriteIops'), rc('randWriteIops'))} b/bare ${ratio(b('randWriteIops'), bare('randWriteIops'))}`,
    `up/unique b ${ratio(b('uploadedPerUnique'), 1)} r ${ratio(rc('uploadedPerUnique'), 1)}`,
    `cold b/r ${ratio(b('coldMBps'), rc('coldMBps'))} b/stream ${ratio(b('coldMBps'), stream)}`,
    `warm b/bare ${ratio(b('warmMBps'), bare('warmMBps'))}`,
    `seqwrite b/r ${ratio(b('seqWriteMBps'), rc('seqWriteMBps'))}`,
    `trace r/b ${ratio(rc('traceMs'), b('traceMs'))}`,
    `rss b ${round(Math.max(b('peakRssMiB'), b('peakRssWriteMiB')), 0)} r ${round(Math.max(rc('peakRssMiB'), rc('peakRssWriteMiB')), 0)} MiB`,
    `1TiB rss b ${round(b('hugePeakRssMiB'), 0)} r ${round(rc('hugePeakRssMiB'), 0)} MiB`,
    `mount 1TiB/256MiB b ${ratio(b('hugeMountMs') + b('hugeFirstAccessMs'), b('mountMs') + b('firstAccessMs'))}`,
  ];
  if (COLUMNS.includes('base') && COLUMNS.includes('blobdisk')) {
    const vs = (k: string): string => `${k} ${round(m('blobdisk', k), 1)}/${round(m('base', k), 1)}`;
    summary.push(`this/base: ${['randRead1Iops', 'randRead4Iops', 'randWriteIops', 'cpuUsPerRead', 'cpuUsPerWrite'].map(vs).join(', ')}`);
  }
  process.stdout.write(`summary: ${summary.join(' | ')}\n`);
  fs.mkdirSync(path.join(ROOT, '.bench'), { recursive: true });
  fs.writeFileSync(path.join(ROOT, '.bench', 'peers.json'), `${JSON.stringify({ at: new Date().toISOString(), args, results, summary }, null, 2)}\n`);
}

main().catch((e: unknown) => {
  process.stderr.write(`peers: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exitCode = 1;
});
