/* Helpers for the end-to-end tests of the write path (write*.test.ts, crash*.test.ts,
 * enospc*.test.ts). Like test/support/mount.ts they only ever touch a mounted path through
 * child processes (dd, truncate, cp, qemu-img ...), never with fs calls of this process: a
 * FUSE callback runs on the mount's event loop, and the test must not wait on itself.
 * Expected bytes are always built locally, from what the test wrote, and compared with a
 * direct SDK download of the blob. */

import { BlobServiceClient, type ContainerClient } from '@azure/storage-blob';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { cliEnv, makeTempDir, runCli, sh, sha256, startMount, type RunResult, type RunningMount } from './mount';
import type { MountStatus } from '../../lib/mount';

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;

type ImageStatus = MountStatus['images'][number];

/** A container client on `connectionString`, created if it does not exist yet. */
export async function containerOn(connectionString: string, name: string): Promise<ContainerClient> {
  const container = BlobServiceClient.fromConnectionString(connectionString).getContainerClient(name);
  await container.createIfNotExists();
  return container;
}

/** Throws with the command's output when it did not exit 0 (for setup steps). */
export function ok(r: RunResult, what: string): RunResult {
  if (r.code !== 0) throw new Error(`${what} failed (code ${r.code}, signal ${r.signal}${r.timedOut ? ', timed out' : ''}):\n${r.stderr}${r.stdout}`);
  return r;
}

let scratchDir: string | undefined;
let scratchSeq = 0;

/** A fresh path for a local (not mounted) scratch file. */
export async function scratchFile(name = 'data'): Promise<string> {
  scratchDir ??= await makeTempDir('blobdisk-scratch-');
  return path.join(scratchDir, `${scratchSeq++}-${name}`);
}

/** Writes `data` into `file` at byte `offset` with `dd conv=notrunc` (plus `conv` extras such
 *  as 'fsync'), as a user would patch an image. Resolves with dd's result. */
export async function ddWrite(file: string, offset: number, data: Buffer, options: { conv?: string[]; bs?: number; timeoutMs?: number } = {}): Promise<RunResult> {
  const src = await scratchFile('dd-src');
  await fsp.writeFile(src, data);
  const conv = ['notrunc', ...(options.conv ?? [])].join(',');
  const r = await sh(
    'dd',
    [`if=${src}`, `of=${file}`, `bs=${options.bs ?? MiB}`, `seek=${offset}`, 'oflag=seek_bytes', `conv=${conv}`, 'status=none'],
    { timeoutMs: options.timeoutMs ?? 90_000 },
  );
  await fsp.rm(src, { force: true });
  return r;
}

/** Bytes [offset, offset + length) of `file` (through the mount) read by dd in a child process;
 *  shorter when the file ends first. */
export async function readRange(file: string, offset: number, length: number, options: { direct?: boolean } = {}): Promise<Buffer> {
  const out = await scratchFile('dd-out');
  const iflag = `iflag=skip_bytes,count_bytes${options.direct ? ',direct' : ''}`;
  ok(await sh('dd', [`if=${file}`, `of=${out}`, `bs=${MiB}`, `skip=${offset}`, `count=${length}`, iflag, 'status=none'], { timeoutMs: 180_000 }), `dd read of ${file}`);
  const data = await fsp.readFile(out);
  await fsp.rm(out, { force: true });
  return data;
}

/** The whole of `file` (through the mount), read by `cat` in a child process. */
export async function readAll(file: string): Promise<Buffer> {
  const out = await scratchFile('cat-out');
  ok(await sh('sh', ['-c', 'cat -- "$1" > "$2"', 'sh', file, out], { timeoutMs: 300_000 }), `cat ${file}`);
  const data = await fsp.readFile(out);
  await fsp.rm(out, { force: true });
  return data;
}

/** `base` with `data` written at `offset` (growing it, zero-filled, when the write ends past it). */
export function patched(base: Buffer, offset: number, data: Buffer): Buffer {
  const out = Buffer.alloc(Math.max(base.length, offset + data.length));
  base.copy(out);
  data.copy(out, offset);
  return out;
}

/** `base` cut or zero-extended to `size`, as truncate(2) does. */
export function resized(base: Buffer, size: number): Buffer {
  const out = Buffer.alloc(size);
  base.copy(out, 0, 0, Math.min(size, base.length));
  return out;
}

/** Describes where two buffers first differ, or undefined when they are equal. Keeps a
 *  failing assertion short (no multi-megabyte diff) and precise. */
export function firstDifference(actual: Buffer, expected: Buffer): string | undefined {
  if (actual.equals(expected)) return undefined;
  const n = Math.min(actual.length, expected.length);
  let i = 0;
  while (i < n && actual[i] === expected[i]) i++;
  if (i === n) return `lengths differ: got ${actual.length} bytes, expected ${expected.length} (equal up to ${n})`;
  let j = i;
  while (j < n && actual[j] !== expected[j]) j++;
  return `first difference at byte ${i} (0x${i.toString(16)}): got ${actual.subarray(i, i + 8).toString('hex')}, expected ${expected.subarray(i, i + 8).toString('hex')}; ` +
    `differing run ${j - i} bytes; lengths ${actual.length}/${expected.length}; sha256 ${sha256(actual).slice(0, 12)}/${sha256(expected).slice(0, 12)}`;
}

/** Asserts `actual` equals `expected` byte for byte, with a short message saying where not. */
export function expectBytes(actual: Buffer, expected: Buffer, what: string): void {
  const diff = firstDifference(actual, expected);
  expect(diff === undefined ? `${what}: equal` : `${what}: ${diff}`).toBe(`${what}: equal`);
}

/** A blob's whole content by a direct SDK download. */
export async function sdkDownload(container: ContainerClient, name: string): Promise<Buffer> {
  return container.getBlobClient(name).downloadToBuffer();
}

/** Blob type, size and metadata by a direct SDK Get Blob Properties. */
export async function sdkProperties(container: ContainerClient, name: string): Promise<{ type: string; size: number; metadata: Record<string, string> }> {
  const p = await container.getBlobClient(name).getProperties();
  return { type: p.blobType ?? '?', size: p.contentLength ?? -1, metadata: p.metadata ?? {} };
}

/** Bytes held in written page ranges of a page blob (sum of listPageRanges). */
export async function sdkPageBytes(container: ContainerClient, name: string): Promise<number> {
  let total = 0;
  for await (const page of container.getPageBlobClient(name).listPageRanges().byPage()) {
    for (const r of page.pageRange ?? []) total += r.end - r.start + 1;
  }
  return total;
}

/** The status entry of `imagePath`, or a thrown error listing what the mount has. */
export async function imageStatus(mount: RunningMount, imagePath: string): Promise<ImageStatus> {
  const status = await mount.status();
  const image = status.images.find((i) => i.path === imagePath);
  if (!image) throw new Error(`status of ${mount.mnt} has no image ${imagePath}; it has ${status.images.map((i) => i.path).join(', ') || 'none'}`);
  return image;
}

/** `blobdisk flush <mnt> [file]`: resolves with the result (the caller checks `code`). */
export function flushCli(mount: RunningMount, file?: string, env?: NodeJS.ProcessEnv): Promise<RunResult> {
  return runCli(['flush', mount.mnt, ...(file !== undefined ? [file] : [])], { timeoutMs: 90_000, env: env ?? cliEnv() });
}

/** Starts a mount of `container` on `connectionString` with cache `cacheDir` (and `more` flags). */
export function mountOn(
  connectionString: string,
  container: string | undefined,
  cacheDir: string,
  more: readonly string[] = [],
  options: { mnt?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<RunningMount> {
  return startMount(
    [
      '--connection-string', connectionString,
      ...(container !== undefined ? ['--container', container] : []),
      '--cache-dir', cacheDir,
      '--log-level', 'warn',
      // A drain that cannot make progress ends the mount within this, not after the default minute.
      ...(more.includes('--drain-timeout') ? [] : ['--drain-timeout', '20']),
      ...more,
    ],
    { ...(options.mnt !== undefined ? { mnt: options.mnt } : {}), ...(options.env !== undefined ? { env: options.env } : {}) },
  );
}

/** A new, empty cache directory (for a cold mount that must fetch everything from Azure). */
export async function freshCacheDir(): Promise<string> {
  return path.join(await makeTempDir('blobdisk-cache-'), 'cache');
}

/** Stops `mount` (SIGTERM: drain, unmount) and asserts it drained and exited 0 by itself. */
export async function unmountClean(mount: RunningMount): Promise<void> {
  const r = await mount.stop();
  const tail = r.stderr.split('\n').slice(-15).join('\n');
  expect({ code: r.code, clean: r.clean, tail: r.code === 0 ? '' : tail }).toEqual({ code: 0, clean: true, tail: '' });
}

/** A local file of `size` bytes holding `ranges` (offset → data) and zeros elsewhere (sparse). */
export async function localImage(size: number, ranges: readonly { offset: number; data: Buffer }[]): Promise<{ file: string; bytes: Buffer }> {
  const file = await scratchFile('image.raw');
  let bytes: Buffer = Buffer.alloc(size);
  const handle = await fsp.open(file, 'w');
  try {
    await handle.truncate(size);
    for (const { offset, data } of ranges) {
      await handle.write(data, 0, data.length, offset);
      bytes = patched(bytes, offset, data);
    }
  } finally {
    await handle.close();
  }
  return { file, bytes };
}
