/* The kill -9 soak: writers write to a page blob through a real mount with O_DIRECT while
 * the mount is SIGKILLed at random moments, cleared (`blobdisk unmount`, which clears a mount
 * whose process is gone), and mounted again on the same cache directory; the writers go on.
 * Every `checkEvery` cycles and at the end, the recovered mount flushes and a second mount
 * with an EMPTY cache reads the whole image: every acknowledged write must be there, byte
 * for byte. A write is acknowledged when its `dd oflag=direct` exited 0 (the write syscall
 * returned); a write that failed because the mount died may or may not have landed, so
 * either its bytes or what was there before are accepted. The writers are `dd` children
 * (the driver must never touch the mount itself, see test/support/mount.ts), each on its own
 * half of the image so that acknowledged writes have a known order. Used by
 * `npm run soak -- --kill-cycles N` (bench/soak.ts) and test/e2e/kill-soak.test.ts. */

import type { ContainerClient } from '@azure/storage-blob';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { Prng } from './fsx';
import { forceUnmount, isMounted, makeTempDir, newMountpoint, processesMentioning, runCli, sh, sha256, sleep, uploadPageBlob, within, type RunningMount } from './mount';
import { KiB, MiB, containerOn, flushCli, freshCacheDir, mountOn, readAll, sdkDownload } from './write-helpers';

/** The unit of the model: every write covers whole units. */
const UNIT = 4 * KiB;
const IMAGE = 'disk.img';
const WRITERS = 2;

export interface KillSoakOptions {
  readonly connectionString: string;
  readonly container: string;
  readonly cycles: number;
  readonly seed: number;
  /** Check through a mount with an empty cache every this many cycles (and at the end). */
  readonly checkEvery: number;
  readonly imageSize: number;
  /** How long the mount lives before it is killed: uniformly in [min, max] ms. */
  readonly liveMs: readonly [number, number];
  readonly log: (line: string) => void;
}

export const KILL_SOAK_DEFAULTS = Object.freeze({ checkEvery: 10, imageSize: 32 * MiB, liveMs: [300, 2500] as const });

export interface KillSoakSummary {
  readonly seed: number;
  readonly cycles: number;
  readonly acked: number;
  /** Writes that failed because the mount died under them (either outcome accepted). */
  readonly inFlight: number;
  readonly lost: number;
  readonly checks: number;
  readonly seconds: number;
  /** Slowest time from the kill to the next mount being ready, ms. */
  readonly slowestRemountMs: number;
  /** Things worth reporting that are not lost data (a dead mount not cleared, a refused remount). */
  readonly notes: readonly string[];
}

export class KillSoakFailure extends Error {}

interface Write {
  readonly seq: number;
  readonly writer: number;
  readonly cycle: number;
  readonly unit: number;
  readonly units: number;
  /** First unit of the data in the source file. */
  readonly src: number;
}

/** What each unit of the image may hold: the last acknowledged write (or zeros), plus the
 *  writes that failed under a kill after it. */
class Model {
  private readonly acked: (Write | undefined)[];
  private readonly maybe = new Map<number, Write[]>();
  constructor(units: number) {
    this.acked = new Array<Write | undefined>(units).fill(undefined);
  }
  ack(w: Write): void {
    for (let i = 0; i < w.units; i++) {
      this.acked[w.unit + i] = w;
      this.maybe.delete(w.unit + i);
    }
  }
  failed(w: Write): void {
    for (let i = 0; i < w.units; i++) {
      const list = this.maybe.get(w.unit + i) ?? [];
      list.push(w);
      this.maybe.set(w.unit + i, list);
    }
  }
  ackedAt(unit: number): Write | undefined {
    return this.acked[unit];
  }
  maybeAt(unit: number): readonly Write[] {
    return this.maybe.get(unit) ?? [];
  }
}

function describe(w: Write | undefined): string {
  return w === undefined ? 'zeros (never written)' : `write #${w.seq} (writer ${w.writer}, cycle ${w.cycle}, offset ${w.unit * UNIT}, ${w.units * UNIT} bytes)`;
}

export async function runKillSoak(o: KillSoakOptions): Promise<KillSoakSummary> {
  const t0 = Date.now();
  const rng = new Prng(o.seed);
  const units = Math.floor(o.imageSize / UNIT);
  const container: ContainerClient = await containerOn(o.connectionString, o.container);
  await uploadPageBlob(container, IMAGE, units * UNIT);

  // The source of every write: seeded random data, 4096 units (16 MiB).
  const srcUnits = 4096;
  const source = Buffer.alloc(srcUnits * UNIT);
  const dataRng = new Prng(o.seed ^ 0x5eed);
  for (let i = 0; i < source.length; i += 4) source.writeUInt32LE(dataRng.u32(), i);
  const work = await makeTempDir('blobdisk-killsoak-');
  const srcFile = path.join(work, 'source');
  await fsp.writeFile(srcFile, source);
  const ackLog = await fsp.open(path.join(work, 'acknowledged.log'), 'a');

  const cacheDir = await freshCacheDir();
  const mnt = await newMountpoint('blobdisk-killsoak-mnt-');
  const image = path.join(mnt, IMAGE);
  const model = new Model(units);
  const notes: string[] = [];
  let acked = 0;
  let inFlight = 0;
  let seq = 0;
  let cycle = 0;
  let slowestRemountMs = 0;
  let checks = 0;

  // The gate: writers start a new dd only while it is open (a mount is up).
  let gate: Promise<void> = Promise.resolve();
  let opener: (() => void) | undefined;
  const closeGate = (): void => {
    if (opener === undefined) gate = new Promise((r) => (opener = r));
  };
  const openGate = (): void => {
    opener?.();
    opener = undefined;
  };
  let stopWriters = false;
  const active = new Set<Promise<unknown>>();

  const writer = async (id: number): Promise<void> => {
    const half = Math.floor(units / WRITERS);
    const base = id * half;
    while (!stopWriters) {
      await gate;
      if (stopWriters) return;
      const n = 1 << rng.below(6); // 4 KiB .. 128 KiB
      const w: Write = { seq: seq++, writer: id, cycle, unit: base + rng.below(half - n + 1), units: n, src: rng.below(srcUnits - n + 1) };
      // nocreat: a dd that reaches the bare mountpoint after the kill must fail, not create a local file.
      const run = sh('dd', [`if=${srcFile}`, `of=${image}`, `bs=${UNIT}`, `count=${n}`, `skip=${w.src}`, `seek=${w.unit}`, 'oflag=direct', 'conv=notrunc,nocreat', 'status=none'], { timeoutMs: 120_000 });
      active.add(run);
      const r = await run;
      active.delete(run);
      if (r.code === 0) {
        model.ack(w);
        acked++;
        const sum = sha256(source.subarray(w.src * UNIT, (w.src + n) * UNIT)).slice(0, 16);
        await ackLog.write(`${w.seq} cycle=${w.cycle} writer=${id} offset=${w.unit * UNIT} length=${n * UNIT} sha256=${sum}\n`);
      } else {
        model.failed(w);
        inFlight++;
        if (r.timedOut) notes.push(`cycle ${cycle}: a dd of write #${w.seq} hung for 120 s`);
      }
    }
  };

  const mountArgs = (): string[] => ['--write-back-delay', String([0, 0.05, 0.2, 0.5][rng.below(4)]), '--dir-cache-time', '1'];
  /** Mounts on the cache dir; a refusal is noted and retried (a finding, not a loss). */
  const mountAgain = async (): Promise<RunningMount> => {
    for (let attempt = 1; ; attempt++) {
      try {
        return await mountOn(o.connectionString, o.container, cacheDir, mountArgs(), { mnt });
      } catch (e) {
        const first = (e instanceof Error ? e.message : String(e)).split('\n').slice(0, 4).join(' | ');
        notes.push(`cycle ${cycle}: remount on the same cache dir failed (attempt ${attempt}): ${first}`);
        o.log(`cycle ${cycle}: remount failed (attempt ${attempt}), retrying in 5 s`);
        if (attempt >= 20) throw new KillSoakFailure(`kill-soak: seed ${o.seed}: cannot mount again after cycle ${cycle}:\n${first}`);
        await sleep(5000);
      }
    }
  };

  /** Clears the dead mount: `blobdisk unmount` must do it; umount/fusermount3 is the fallback, noted. */
  const clearDead = async (): Promise<void> => {
    const r = await runCli(['unmount', mnt], { timeoutMs: 60_000 });
    if (await isMounted(mnt)) {
      notes.push(`cycle ${cycle}: blobdisk unmount did not clear the dead mount (exit ${r.code}: ${r.stderr.trim().split('\n')[0] ?? ''})`);
      await forceUnmount(mnt);
    }
  };

  const verify = async (final: boolean): Promise<number> => {
    checks++;
    const cold = await mountOn(o.connectionString, o.container, await freshCacheDir(), ['--read-only', '--dir-cache-time', '1']);
    let view: Buffer;
    try {
      view = await readAll(path.join(cold.mnt, IMAGE));
    } finally {
      await cold.stop();
    }
    const azure = await sdkDownload(container, IMAGE);
    const lostWrites = new Map<number, string>();
    const report: string[] = [];
    if (!azure.equals(view)) report.push(`the empty-cache mount and an SDK download differ (sha256 ${sha256(view).slice(0, 12)} / ${sha256(azure).slice(0, 12)})`);
    for (let u = 0; u < units; u++) {
      const got = view.subarray(u * UNIT, (u + 1) * UNIT);
      const expectedOf = (w: Write | undefined): Buffer =>
        w === undefined ? Buffer.alloc(UNIT) : source.subarray((w.src + (u - w.unit)) * UNIT, (w.src + (u - w.unit) + 1) * UNIT);
      const want = model.ackedAt(u);
      if (got.equals(expectedOf(want))) continue;
      if (model.maybeAt(u).some((w) => got.equals(expectedOf(w)))) continue;
      const key = want?.seq ?? -1;
      if (!lostWrites.has(key)) {
        const zero = got.equals(Buffer.alloc(UNIT));
        lostWrites.set(key, `unit at offset ${u * UNIT}: expected ${describe(want)}, found ${zero ? 'zeros' : `other bytes (${got.subarray(0, 8).toString('hex')}…)`}`);
      }
    }
    const lost = lostWrites.size + (report.length > 0 ? 1 : 0);
    o.log(`check ${checks}${final ? ' (final)' : ''} after cycle ${Math.min(cycle, o.cycles)}: ${acked} acknowledged writes, ${lostWrites.size} lost`);
    if (lost > 0) {
      const lines = [...report, ...[...lostWrites.values()].slice(0, 20)];
      throw new KillSoakFailure(
        `kill-soak: seed ${o.seed}: ${lostWrites.size} acknowledged writes lost at cycle ${Math.min(cycle, o.cycles)} (${acked} acknowledged so far):\n  ${lines.join('\n  ')}\n` +
          `acknowledged writes are logged in ${path.join(work, 'acknowledged.log')}; replay with --seed ${o.seed} --kill-cycles ${o.cycles}`,
      );
    }
    return lost;
  };

  /** Stops new writes and waits for the ones in flight. */
  const quiesce = async (): Promise<void> => {
    closeGate();
    await Promise.all([...active]);
  };

  o.log(`seed ${o.seed}, ${o.cycles} kill cycles, ${WRITERS} O_DIRECT writers on a ${o.imageSize / MiB} MiB page blob, check every ${o.checkEvery} cycles`);
  closeGate();
  let mount = await mountAgain();
  const writers = Array.from({ length: WRITERS }, (_, i) => writer(i));
  openGate();
  let lost = 0;
  try {
    for (cycle = 1; cycle <= o.cycles; cycle++) {
      const [lo, hi] = o.liveMs;
      await sleep(lo + rng.below(hi - lo + 1));
      // Kill in the middle of whatever runs: dd writes, uploads, a grain-map fold.
      closeGate();
      const killedAt = Date.now();
      mount.child.kill('SIGKILL');
      await within(mount.exited, 10_000, undefined);
      await Promise.all([...active]);
      await clearDead();
      await mount.stop(); // bookkeeping of the helper only: the process is gone, the mount cleared
      mount = await mountAgain();
      slowestRemountMs = Math.max(slowestRemountMs, Date.now() - killedAt);
      if (cycle % o.checkEvery === 0 && cycle !== o.cycles) {
        const f = await flushCli(mount);
        if (f.code !== 0) throw new KillSoakFailure(`kill-soak: seed ${o.seed}: blobdisk flush failed after cycle ${cycle} (exit ${f.code}): ${f.stderr}`);
        lost += await verify(false);
      }
      openGate();
      if (cycle % Math.max(1, Math.ceil(o.cycles / 20)) === 0 || cycle === o.cycles) {
        o.log(`cycle ${cycle}/${o.cycles}: ${acked} acknowledged writes, ${inFlight} cut off by a kill, slowest kill-to-ready ${(slowestRemountMs / 1000).toFixed(1)} s, ${Math.round((Date.now() - t0) / 1000)} s`);
      }
    }
    stopWriters = true;
    await quiesce();
    openGate();
    await Promise.all(writers);
    const f = await flushCli(mount);
    if (f.code !== 0) throw new KillSoakFailure(`kill-soak: seed ${o.seed}: the final blobdisk flush failed (exit ${f.code}): ${f.stderr}`);
    const stop = await mount.stop();
    if (stop.code !== 0 || !stop.clean) notes.push(`the last mount did not stop cleanly (exit ${stop.code}): ${stop.stderr.split('\n').slice(-5).join(' | ')}`);
    if (process.env.KILL_SOAK_SELFTEST === '1') {
      // Checks the checker: one acknowledged write overwritten behind blobdisk's back must be reported.
      const u = model.ackedAt(0) === undefined ? units - 1 : 0;
      await container.getPageBlobClient(IMAGE).uploadPages(Buffer.alloc(UNIT, 0xee), u * UNIT, UNIT);
    }
    lost += await verify(true);
  } finally {
    stopWriters = true;
    openGate();
    await ackLog.close();
    await mount.stop();
    // A dd left over from a failure must not outlive the run.
    for (const p of await processesMentioning(srcFile)) process.kill(p.pid, 'SIGKILL');
  }
  return { seed: o.seed, cycles: o.cycles, acked, inFlight, lost, checks, seconds: (Date.now() - t0) / 1000, slowestRemountMs, notes };
}
