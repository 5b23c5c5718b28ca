/* End to end: a VM boots from a blob under the stock libvirt. A mount made as the README's
 * libvirt section says (--allow-other --uid libvirt-qemu --gid libvirt-qemu) serves a page
 * blob; examples/vm/boot-vm.sh, exactly as a user runs it, builds a tiny guest onto it
 * (Debian's cloud kernel, a busybox initramfs, an ext4 root file system on the blob),
 * defines and starts it with virsh from examples/vm/domain.xml (cache='none',
 * io='native', virtio), and the guest writes, fsyncs and reads back a pattern and powers
 * off. The pattern is then checked through a mount with an EMPTY cache, the guest boots
 * cold from that mount and finds its pattern, and the last one is checked in what Azure
 * holds. QEMU runs as libvirt-qemu, with KVM where it works and TCG otherwise.
 * Needs root, /dev/fuse and the packages .ci/run installs (libvirt, QEMU, the kernel,
 * busybox-static); without them it is skipped, saying so, everywhere but in CI. */

import type { ContainerClient } from '@azure/storage-blob';
import { spawnSync } from 'node:child_process';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { startAzurite, type RunningAzurite } from '../../lib/azurite';
import { makeTempDir, newMountpoint, removeTempDirs, ROOT, type RunningMount, sh, stopAllMounts } from '../support/mount';
import { bootVm, ensureLibvirtd, sha256InExt4, type BootReport } from '../support/vm';
import { containerOn, freshCacheDir, mountOn, ok, sdkDownload, unmountClean } from '../support/write-helpers';

const CONTAINER = 'vms';
const LIBVIRT_ACCESS = ['--allow-other', '--uid', 'libvirt-qemu', '--gid', 'libvirt-qemu'];

// Decided when the file is collected, before anything is mounted.
const missing = ['virsh', 'qemu-system-x86_64', 'busybox'].find((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0);
const itVm = missing !== undefined && process.env.CI === undefined ? it.skip : it;
if (missing !== undefined) {
  // eslint-disable-next-line no-console
  console.warn(`vm.test.ts: ${missing} is not installed, so the VM boot test ${process.env.CI === undefined ? 'is skipped' : 'fails'}; .ci/run installs it (apt-get install qemu-system-x86 libvirt-daemon-system libvirt-clients linux-image-cloud-amd64 busybox-static)`);
}

let azurite: RunningAzurite;
let container: ContainerClient;
let vmDir: string;
let stopLibvirtd: (() => Promise<void>) | undefined;

/** A mount as the README's libvirt section has it. */
async function libvirtMount(): Promise<RunningMount> {
  return mountOn(azurite.connectionString, CONTAINER, await freshCacheDir(), LIBVIRT_ACCESS, { mnt: await newMountpoint('blobdisk-vm-', true) });
}

/** Fails with the script's output unless the guest booted, ran as libvirt-qemu and read back its pattern. */
function expectBooted(report: BootReport): void {
  const { code, stdout, stderr } = report.result;
  expect({ code, stderr: code === 0 ? '' : `${stdout}\n${stderr}` }).toEqual({ code: 0, stderr: '' });
  expect(report.qemuUser).toBe('libvirt-qemu');
  expect(['kvm', 'tcg']).toContain(report.accel);
  expect(report.pattern).toMatch(/^[0-9a-f]{64}$/);
  expect(report.bootToInitSeconds).toBeGreaterThan(0);
}

beforeAll(async () => {
  if (missing !== undefined && process.env.CI !== undefined) throw new Error(`${missing} is missing; .ci/run should have installed it`);
  if (missing !== undefined) return;
  stopLibvirtd = await ensureLibvirtd();
  azurite = await startAzurite({ inMemory: true });
  container = await containerOn(azurite.connectionString, CONTAINER);
  vmDir = await makeTempDir('blobdisk-vm-files-');
  await fsp.chmod(vmDir, 0o755);
}, 120_000);

afterAll(async () => {
  await stopAllMounts();
  await azurite?.stop();
  await removeTempDirs();
  await stopLibvirtd?.();
});

itVm('virt-xml-validate accepts every libvirt XML in examples/', async () => {
  const dir = path.join(ROOT, 'examples');
  const xmls: string[] = [];
  for (const sub of ['', 'vm']) {
    for (const f of await fsp.readdir(path.join(dir, sub))) if (f.endsWith('.xml')) xmls.push(path.join(dir, sub, f));
  }
  expect(xmls.length).toBeGreaterThan(0);
  for (const xml of xmls) {
    const r = await sh('virt-xml-validate', [xml]);
    expect({ xml, code: r.code, said: (r.stdout + r.stderr).trim() }).toEqual({ xml, code: 0, said: `${xml} validates` });
  }
});

itVm(
  'a guest boots from a page blob under libvirt, and what it fsynced is in Azure and reads back through an empty cache',
  async () => {
    // 1. Build the guest onto a new page blob and boot it: it writes, fsyncs and reads back a pattern.
    const first = await libvirtMount();
    const image = path.join(first.mnt, 'vm.img');
    const built = await bootVm(image, { build: true, vmDir });
    expectBooted(built);
    expect(built.found).toBeUndefined();
    await unmountClean(first);
    expect((await container.getBlobClient('vm.img').getProperties()).blobType).toBe('PageBlob');

    // 2. An empty cache: the pattern comes from Azure, inside a file system that checks clean.
    const cold = await libvirtMount();
    const coldImage = path.join(cold.mnt, 'vm.img');
    expect(await sha256InExt4(coldImage, '/pattern')).toBe(built.pattern);
    const fsck = await sh('e2fsck', ['-fn', coldImage], { timeoutMs: 120_000 });
    expect({ code: fsck.code, out: fsck.code === 0 ? '' : fsck.stdout + fsck.stderr }).toEqual({ code: 0, out: '' });
    await unmountClean(cold);

    // 3. Boot cold from a mount with an empty cache: the guest finds the first boot's pattern.
    const coldBoot = await libvirtMount();
    const again = await bootVm(path.join(coldBoot.mnt, 'vm.img'), { vmDir });
    expectBooted(again);
    expect(again.found).toEqual({ sha256: built.pattern, ok: true });
    expect(again.pattern).not.toBe(built.pattern);
    await unmountClean(coldBoot);

    // 4. What Azure holds, downloaded with the SDK, carries the second boot's pattern.
    const local = path.join(vmDir, 'downloaded.img');
    await fsp.writeFile(local, await sdkDownload(container, 'vm.img'));
    expect(await sha256InExt4(local, '/pattern')).toBe(again.pattern);
    ok(await sh('e2fsck', ['-fn', local]), 'e2fsck of the downloaded image');
  },
  900_000,
);
