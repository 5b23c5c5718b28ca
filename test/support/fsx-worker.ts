/* The hands of the fsx exerciser (test/support/fsx.ts): a child process that makes the
 * real file system calls on a mounted blobdisk and answers one JSON line per request on
 * stdout. It runs apart from the driver because a FUSE callback runs on the event loop of
 * the mounting process, and the driver must never wait on a process it also serves; it
 * keeps no model and decides nothing, so a wrong byte can only come from the mount.
 *   node dist/test/support/fsx-worker.js <mountpoint>
 * One worker lives for one mount: `exit` closes every handle so the mount can go. */

import { execFile } from 'node:child_process';
import fs from 'node:fs';
import fsp, { type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import readline from 'node:readline';
import { promisify } from 'node:util';
import type { WorkerReply, WorkerRequest } from './fsx';

const run = promisify(execFile);
const mnt = process.argv[2];
if (mnt === undefined) {
  process.stderr.write('usage: fsx-worker <mountpoint>\n');
  process.exit(2);
}

/** The handle each file is written through (opened read-write, sometimes O_DIRECT). */
const handles = new Map<string, FileHandle>();

function handleOf(file: string): FileHandle {
  const h = handles.get(file);
  if (!h) throw new Error(`${file} is not open`);
  return h;
}

async function closeAll(): Promise<void> {
  for (const [file, h] of handles) {
    handles.delete(file);
    await h.close();
  }
}

/** Reads once (one pread): a regular file never returns less than asked before its end,
 *  so a short read is a finding, not something to paper over with a loop. */
async function readOnce(h: FileHandle, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  const { bytesRead } = await h.read(buf, 0, length, offset);
  return buf.subarray(0, bytesRead);
}

/** truncate(2) on the path, which reaches the mount as a truncate without a file handle.
 *  Node has no binding for it (fs.truncate opens the file and calls ftruncate), nor has
 *  coreutils' truncate; perl's truncate on a name calls truncate(2). */
async function truncateByPath(file: string, size: number): Promise<void> {
  const script = 'truncate($ARGV[0], $ARGV[1]) or do { print STDERR "$!\\n"; exit 1 }';
  try {
    await run('perl', ['-e', script, file, String(size)]);
  } catch (e: unknown) {
    const stderr = (e as { stderr?: string }).stderr?.trim() ?? '';
    throw Object.assign(new Error(`truncate(2) of ${file} to ${size}: ${stderr || String(e)}`), { code: 'ETRUNCATE' });
  }
}

async function serve(req: WorkerRequest): Promise<WorkerReply> {
  const at = (file: string): string => path.join(mnt as string, file);
  switch (req.op) {
    case 'open': {
      const old = handles.get(req.file);
      handles.delete(req.file);
      await old?.close();
      let flags = req.truncate ? fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_TRUNC : fs.constants.O_RDWR;
      if (req.direct) flags |= fs.constants.O_DIRECT;
      handles.set(req.file, await fsp.open(at(req.file), flags, 0o644));
      return { id: req.id, ok: true };
    }
    case 'write': {
      const data = Buffer.from(req.data, 'base64');
      const { bytesWritten } = await handleOf(req.file).write(data, 0, data.length, req.offset);
      return { id: req.id, ok: true, n: bytesWritten };
    }
    case 'read': {
      // A separate handle opened for this read alone makes the kernel drop its page cache
      // of the file (no keep_cache), and with O_DIRECT it bypasses that cache entirely.
      if (req.via === 'fd') {
        const data = await readOnce(handleOf(req.file), req.offset, req.length);
        return { id: req.id, ok: true, n: data.length, data: data.toString('base64') };
      }
      const flags = fs.constants.O_RDONLY | (req.via === 'direct' ? fs.constants.O_DIRECT : 0);
      const h = await fsp.open(at(req.file), flags);
      try {
        const data = await readOnce(h, req.offset, req.length);
        return { id: req.id, ok: true, n: data.length, data: data.toString('base64') };
      } finally {
        await h.close();
      }
    }
    case 'truncate':
      if (req.byPath) await truncateByPath(at(req.file), req.size);
      else await handleOf(req.file).truncate(req.size);
      return { id: req.id, ok: true };
    case 'sync':
      if (req.dataOnly) await handleOf(req.file).datasync();
      else await handleOf(req.file).sync();
      return { id: req.id, ok: true };
    case 'stat': {
      const st = req.byPath ? await fsp.stat(at(req.file)) : await handleOf(req.file).stat();
      return { id: req.id, ok: true, n: st.size };
    }
    case 'exit':
      await closeAll();
      return { id: req.id, ok: true };
  }
}

function send(reply: WorkerReply): void {
  process.stdout.write(`${JSON.stringify(reply)}\n`);
}

// Requests arrive one at a time (the driver waits for each answer), so they run in order.
const input = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
let queue = Promise.resolve();
input.on('line', (line) => {
  queue = queue.then(async () => {
    const req = JSON.parse(line) as WorkerRequest;
    try {
      send(await serve(req));
    } catch (e: unknown) {
      const code = (e as NodeJS.ErrnoException).code;
      send({ id: req.id, ok: false, code: typeof code === 'string' ? code : 'ERROR', message: e instanceof Error ? e.message : String(e) });
    }
  });
});
// The driver closing our stdin (by any means, also its own death) ends the worker.
input.on('close', () => {
  void queue.then(closeAll).catch(() => undefined);
});
