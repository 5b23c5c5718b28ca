/* Drives examples/vm/boot-vm.sh, the script a user runs to boot a tiny guest under libvirt
 * from an image in a blobdisk mount, and reads what it reports. Used by the end-to-end VM
 * test and by the VM benchmark, so both exercise exactly what the example does. Also
 * starts libvirtd and virtlogd where no service manager did (CI, containers), and stops
 * them again afterwards. */

import fsp from 'node:fs/promises';
import path from 'node:path';
import { ROOT, sh, waitFor, type RunResult } from './mount';

export const BOOT_VM = path.join(ROOT, 'examples', 'vm', 'boot-vm.sh');

export interface BootReport {
  readonly result: RunResult;
  /** kvm or tcg. */
  readonly accel: string | undefined;
  /** The user QEMU ran as. */
  readonly qemuUser: string | undefined;
  /** Seconds from `virsh start` until init on the blob ran. */
  readonly bootToInitSeconds: number | undefined;
  readonly guestUptimeAtInit: number | undefined;
  /** The pattern an earlier boot left, as the guest read it, and whether it matched. */
  readonly found: { sha256: string; ok: boolean } | undefined;
  /** The pattern this boot wrote, fsynced, and read back identical. */
  readonly pattern: string | undefined;
}

/** The tools the VM boot needs, or the first one missing. */
export async function missingVmTool(): Promise<string | undefined> {
  for (const tool of ['virsh', 'qemu-system-x86_64', 'busybox', 'cpio', 'mkfs.ext4', 'runuser']) {
    const r = await sh('sh', ['-c', `command -v ${tool}`]);
    if (r.code !== 0) return tool;
  }
  const kernels = (await fsp.readdir('/boot').catch(() => [])).filter((f) => f.startsWith('vmlinuz-'));
  return kernels.length === 0 ? 'a kernel in /boot (linux-image-cloud-amd64)' : undefined;
}

async function running(name: string): Promise<boolean> {
  return (await sh('pgrep', ['-x', name])).code === 0;
}

/** Starts virtlogd and libvirtd unless they run, and waits until virsh reaches libvirtd.
 *  Returns a function that stops again exactly the daemons this call started. */
export async function ensureLibvirtd(): Promise<() => Promise<void>> {
  const started: number[] = [];
  for (const daemon of ['virtlogd', 'libvirtd']) {
    if (await running(daemon)) continue;
    const r = await sh(daemon, ['-d']);
    if (r.code !== 0) throw new Error(`${daemon} -d failed: ${r.stderr.trim()}`);
    const pid = Number((await sh('pgrep', ['-x', '-n', daemon])).stdout.trim());
    if (pid > 0) started.push(pid);
  }
  const up = await waitFor(async () => (await sh('virsh', ['-q', '-c', 'qemu:///system', 'version'], { timeoutMs: 10_000 })).code === 0, 30_000, 300);
  if (!up) throw new Error('libvirtd did not answer virsh within 30 s');
  return async () => {
    for (const pid of started.reverse()) {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        continue;
      }
      await waitFor(async () => (await sh('kill', ['-0', String(pid)])).code !== 0, 15_000, 200);
    }
  };
}

function field(stdout: string, key: string): string[] | undefined {
  const line = stdout.split('\n').find((l) => l.startsWith(`${key} `));
  return line?.trim().split(/\s+/).slice(1);
}

/** Runs boot-vm.sh on `image` (building it first with `build`); `vmDir` holds the kernel,
 *  initramfs and console log. Never rejects for a failed boot: look at `result.code`. */
export async function bootVm(image: string, options: { build?: boolean; vmDir: string; timeoutMs?: number }): Promise<BootReport> {
  const args = [...(options.build ? ['--build'] : []), image];
  const result = await sh(BOOT_VM, args, { env: { ...process.env, BLOBDISK_VM_DIR: options.vmDir }, timeoutMs: options.timeoutMs ?? 400_000 });
  const num = (key: string): number | undefined => {
    const v = field(result.stdout, key)?.[0];
    return v === undefined ? undefined : Number(v);
  };
  const found = field(result.stdout, 'found-pattern');
  return {
    result,
    accel: field(result.stdout, 'accel')?.[0],
    qemuUser: field(result.stdout, 'qemu-user')?.[0],
    bootToInitSeconds: num('boot-to-init-seconds'),
    guestUptimeAtInit: num('guest-uptime-at-init'),
    found: found?.[0] !== undefined ? { sha256: found[0], ok: found[1] === 'ok' } : undefined,
    pattern: field(result.stdout, 'pattern')?.[0],
  };
}

/** SHA-256 of the file `inside` an ext4 image, read by debugfs (no loop mount needed). */
export async function sha256InExt4(image: string, inside: string): Promise<string> {
  const r = await sh('sh', ['-c', 'debugfs -R "cat $2" "$1" 2>/dev/null | sha256sum', 'sh', image, inside], { timeoutMs: 180_000 });
  if (r.code !== 0) throw new Error(`debugfs cat ${inside} of ${image} failed: ${r.stderr}`);
  return r.stdout.split(/\s/)[0] ?? '';
}
