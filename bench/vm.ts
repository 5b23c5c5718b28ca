/* `npm run bench` (also alone: node dist/bench/vm.js): how long a VM takes from `virsh
 * start` until init runs from its disk, when that disk is a page blob in a blobdisk mount,
 *   cold  a fresh mount with an empty cache dir (everything the boot reads comes from Azure),
 *   warm  the same image again through a new mount on the same cache dir,
 * against the same guest booted from a local file (the disk a user would have instead).
 * The guest is examples/vm/boot-vm.sh's (cloud kernel, busybox initramfs, ext4 root on the
 * blob); it also writes, fsyncs and reads back 4 MiB before it powers off. Boots are
 * interleaved (--reps, default 3), medians are reported, as ratios, never as pass/fail.
 * Under TCG (no working KVM) the guest's own CPU dominates; the ratio is what to read. */

import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startAzurite, type RunningAzurite } from '../lib/azurite';
import { bootVm, ensureLibvirtd, missingVmTool, type BootReport } from '../test/support/vm';
import { Daemon, ensureUnmounted, median, round, runOk, table, waitQuiet } from './lib';

const ROOT = path.resolve(__dirname, '..', '..');
const BLOBDISK = path.join(ROOT, 'bin', 'blobdisk');
const CONTAINER = 'vms';
const IMAGE = 'vm.img';

interface Args {
  reps: number;
}

function parseArgs(argv: string[]): Args {
  const args: Args = { reps: 3 };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--reps') {
      args.reps = Number(argv[++i]);
      if (!Number.isInteger(args.reps) || args.reps <= 0) throw new Error('--reps needs a positive integer');
    } else {
      throw new Error(`unknown argument ${argv[i]}; use --reps N`);
    }
  }
  return args;
}

class VmBench {
  private seq = 0;
  readonly boots = new Map<string, BootReport[]>();
  readonly down = new Map<string, number[]>();

  constructor(
    private readonly work: string,
    private readonly azurite: RunningAzurite,
  ) {}

  /** A writable mount for libvirt's QEMU, as the README says. */
  async mount(cacheDir: string): Promise<{ mnt: string; daemon: Daemon }> {
    const mnt = path.join(this.work, `mnt${this.seq++}`);
    await fsp.mkdir(mnt);
    const args = ['mount', mnt, '--container', CONTAINER, '--cache-dir', cacheDir, '--data-dir', path.join(this.work, 'data'), '--log-level', 'warn'];
    args.push('--allow-other', '--uid', 'libvirt-qemu', '--gid', 'libvirt-qemu');
    const env = { ...process.env, AZURE_STORAGE_CONNECTION_STRING: this.azurite.connectionString };
    return { mnt, daemon: await Daemon.start('blobdisk mount', BLOBDISK, args, /^blobdisk: mounted /m, env) };
  }

  async unmount(m: { mnt: string; daemon: Daemon }): Promise<void> {
    const code = await m.daemon.stop();
    await ensureUnmounted(m.mnt);
    if (code !== 0) throw new Error(`blobdisk mount exited ${code}: ${m.daemon.output.slice(-500)}`);
  }

  async boot(kind: string, image: string, vmDir: string, build = false): Promise<BootReport> {
    await waitQuiet();
    const report = await bootVm(image, { build, vmDir });
    if (report.result.code !== 0 || report.bootToInitSeconds === undefined) {
      throw new Error(`the ${kind} boot failed: ${report.result.stdout}${report.result.stderr}`);
    }
    this.boots.set(kind, [...(this.boots.get(kind) ?? []), report]);
    return report;
  }

  /** Bytes blobdisk fetched from Azure during the boot, from `blobdisk status --json`. */
  async bytesDown(mnt: string): Promise<number> {
    const r = await runOk(process.execPath, [BLOBDISK, 'status', mnt, '--json']);
    return (JSON.parse(r.stdout) as { bytesDown: number }).bytesDown;
  }

  seconds(kind: string): number {
    return median((this.boots.get(kind) ?? []).map((b) => b.bootToInitSeconds ?? NaN));
  }
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  const missing = await missingVmTool();
  if (missing !== undefined) {
    process.stderr.write(`vm benchmark: ${missing} is missing; npm run check (scripts/setup.sh --test) installs what it needs\n`);
    return 1;
  }
  const stopLibvirtd = await ensureLibvirtd();
  const work = await fsp.mkdtemp(path.join(os.tmpdir(), 'blobdisk-vmbench-'));
  await fsp.chmod(work, 0o755);
  const vmDir = path.join(work, 'vm');
  const azurite = await startAzurite({ inMemory: true });
  const bench = new VmBench(work, azurite);
  try {
    const { BlobServiceClient } = await import('@azure/storage-blob');
    const container = BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient(CONTAINER);
    await container.create();

    // The guest, built onto a new page blob and booted once to settle its file system.
    const first = await bench.mount(path.join(work, 'cache-build'));
    await bench.boot('build', path.join(first.mnt, IMAGE), vmDir, true);
    await bench.unmount(first);
    const local = path.join(work, 'local.img');
    await container.getBlobClient(IMAGE).downloadToFile(local);
    await fsp.chmod(local, 0o666);

    let accel = '';
    for (let rep = 0; rep < args.reps; rep++) {
      const cache = path.join(work, `cache${rep}`);
      const cold = await bench.mount(cache);
      accel = (await bench.boot('cold', path.join(cold.mnt, IMAGE), vmDir)).accel ?? '';
      bench.down.set('cold', [...(bench.down.get('cold') ?? []), await bench.bytesDown(cold.mnt)]);
      await bench.unmount(cold);
      const warm = await bench.mount(cache);
      await bench.boot('warm', path.join(warm.mnt, IMAGE), vmDir);
      bench.down.set('warm', [...(bench.down.get('warm') ?? []), await bench.bytesDown(warm.mnt)]);
      await bench.unmount(warm);
      await bench.boot('local', local, vmDir);
    }

    const local_ = bench.seconds('local');
    const rows = ['cold', 'warm', 'local'].map((kind) => {
      const boots = bench.boots.get(kind) ?? [];
      const down = bench.down.get(kind);
      return [
        kind,
        boots.map((b) => b.bootToInitSeconds?.toFixed(2)).join(' '),
        round(bench.seconds(kind), 2),
        round(median(boots.map((b) => b.guestUptimeAtInit ?? NaN)), 2),
        down ? `${round(median(down) / 2 ** 20, 1)} MiB` : '-',
        kind === 'local' ? '1.00' : round(local_ / bench.seconds(kind), 2).toFixed(2),
      ];
    });
    process.stdout.write(`\nVM boot-to-init (virsh start until init runs from the disk), ${accel}, ${args.reps} reps\n`);
    process.stdout.write(`${table(['disk', 'runs (s)', 'median s', 'guest uptime at init', 'down from Azure', 'local / this'], rows)}\n`);
    process.stdout.write(
      `summary: vm boot cold ${round(bench.seconds('cold'), 2)} s (${round(local_ / bench.seconds('cold'), 2)} of local), ` +
        `warm ${round(bench.seconds('warm'), 2)} s (${round(local_ / bench.seconds('warm'), 2)} of local), local ${round(local_, 2)} s\n`,
    );
    await fsp.mkdir(path.join(ROOT, '.bench'), { recursive: true });
    await fsp.writeFile(
      path.join(ROOT, '.bench', 'vm.json'),
      JSON.stringify({ accel, reps: args.reps, seconds: Object.fromEntries([...bench.boots].map(([k, v]) => [k, v.map((b) => b.bootToInitSeconds)])), bytesDown: Object.fromEntries(bench.down) }, null, 2),
    );
    return 0;
  } finally {
    await azurite.stop();
    await fsp.rm(work, { recursive: true, force: true }).catch(() => undefined);
    await stopLibvirtd();
  }
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(`vm benchmark failed: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  },
);
