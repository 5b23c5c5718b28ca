/* The control channel between a running mount and the `blobdisk unmount|status`
 * commands: a Unix socket named after the mountpoint, one JSON request per connection,
 * answered by JSON lines (zero or more {"progress"} lines, then one {"result"} line). */

import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { UsageError, errorMessage } from './errors';

export interface ControlRequest {
  readonly op: string;
  readonly [key: string]: unknown;
}

export type ControlReply = { readonly progress: unknown } | { readonly result: unknown } | { readonly error: string };

export type ControlHandler = (request: ControlRequest, progress: (p: unknown) => void) => Promise<unknown>;

/** The directory of this user's control sockets: the same for every command of the same user,
 *  whatever its environment (no XDG_RUNTIME_DIR, no TMPDIR), so `blobdisk unmount` from a
 *  shell finds the mount a service started. */
export function controlDir(uid: number = process.getuid?.() ?? 0): string {
  return uid === 0 ? '/run/blobdisk' : `/tmp/blobdisk-${uid}`;
}

/** `mountpoint` as the kernel's mount table names it: absolute, with its parent's symlinks
 *  resolved (not the mountpoint's own: resolving it would be a request to the mount). */
export function canonicalMountpoint(mountpoint: string): string {
  const resolved = path.resolve(mountpoint);
  try {
    return path.join(fs.realpathSync(path.dirname(resolved)), path.basename(resolved));
  } catch {
    return resolved;
  }
}

/** The mount's control socket: one per mountpoint, however a command names it (a symlinked
 *  path reaches the same mount as the real one). */
export function controlSocketPath(mountpoint: string, dir: string = controlDir()): string {
  const hash = crypto.createHash('sha256').update(canonicalMountpoint(mountpoint)).digest('hex').slice(0, 24);
  return path.join(dir, `${hash}.sock`);
}

/** The pid file beside a mount's control socket: who serves the mount. */
export function controlPidPath(socketPath: string): string {
  return socketPath.replace(/\.sock$/, '.pid');
}

/** Refuses a control directory another user could have made or can write into: its socket
 *  could then answer `blobdisk flush` with a false "everything is in Azure". */
export function checkControlDir(dir: string, uid: number = process.getuid?.() ?? 0): void {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  const why = !st.isDirectory()
    ? 'is not a directory'
    : st.uid !== uid
      ? `belongs to uid ${st.uid}, not to you (uid ${uid})`
      : (st.mode & 0o077) !== 0
        ? `is open to other users (mode 0${(st.mode & 0o777).toString(8)})`
        : undefined;
  if (why !== undefined) {
    throw new UsageError(`the control directory ${dir} ${why}; someone else may have made it: remove it (rm -r ${dir}) and try again`);
  }
}

export class ControlServer {
  private constructor(
    private readonly server: net.Server,
    readonly socketPath: string,
  ) {}

  static async listen(socketPath: string, handler: ControlHandler): Promise<ControlServer> {
    checkControlDir(path.dirname(socketPath));
    fs.mkdirSync(path.dirname(socketPath), { recursive: true, mode: 0o700 });
    checkControlDir(path.dirname(socketPath));
    fs.rmSync(socketPath, { force: true });
    const server = net.createServer((socket) => {
      let buffered = '';
      socket.setEncoding('utf8');
      socket.on('error', () => undefined);
      socket.on('data', (data: string) => {
        buffered += data;
        const nl = buffered.indexOf('\n');
        if (nl < 0) return;
        const line = buffered.slice(0, nl);
        buffered = '';
        const send = (reply: ControlReply): void => {
          if (!socket.destroyed) socket.write(`${JSON.stringify(reply)}\n`);
        };
        let request: ControlRequest;
        try {
          request = JSON.parse(line) as ControlRequest;
        } catch {
          send({ error: 'malformed request' });
          socket.end();
          return;
        }
        handler(request, (p) => send({ progress: p })).then(
          (result) => send({ result: result ?? null }),
          (e: unknown) => send({ error: errorMessage(e) }),
        ).finally(() => socket.end());
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => resolve());
    });
    fs.chmodSync(socketPath, 0o600);
    fs.writeFileSync(controlPidPath(socketPath), `${process.pid}\n`, { mode: 0o600 });
    return new ControlServer(server, socketPath);
  }

  /** Stops listening and waits (a few seconds at most) for open requests to be answered. */
  async close(): Promise<void> {
    fs.rmSync(this.socketPath, { force: true });
    fs.rmSync(controlPidPath(this.socketPath), { force: true });
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 5_000);
      this.server.close(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}

/** Sends one request to the mount at `mountpoint`; `onProgress` sees progress lines.
 *  Rejects with ENOENT/ECONNREFUSED (as NodeJS errors) when no mount answers there. */
export function controlRequest(mountpoint: string, request: ControlRequest, onProgress: (p: unknown) => void = () => undefined): Promise<unknown> {
  const socketPath = controlSocketPath(mountpoint);
  try {
    checkControlDir(path.dirname(socketPath));
  } catch (e) {
    return Promise.reject(e);
  }
  return new Promise((resolve, reject) => {
    const socket = net.connect(socketPath);
    let buffered = '';
    let settled = false;
    socket.setEncoding('utf8');
    socket.on('connect', () => socket.write(`${JSON.stringify(request)}\n`));
    socket.on('error', (e) => {
      if (!settled) {
        settled = true;
        reject(e);
      }
    });
    socket.on('data', (data: string) => {
      buffered += data;
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const reply = JSON.parse(buffered.slice(0, nl)) as ControlReply;
        buffered = buffered.slice(nl + 1);
        if ('progress' in reply) onProgress(reply.progress);
        else if (!settled) {
          settled = true;
          if ('error' in reply) reject(new Error(reply.error));
          else resolve(reply.result);
        }
      }
    });
    socket.on('close', () => {
      if (!settled) {
        settled = true;
        reject(new Error('the mount closed the control connection without an answer'));
      }
    });
  });
}
