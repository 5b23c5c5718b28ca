/* The control channel between a running mount and the `blobdisk unmount|status`
 * commands: a Unix socket named after the mountpoint, one JSON request per connection,
 * answered by JSON lines (zero or more {"progress"} lines, then one {"result"} line). */

import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { errorMessage } from './errors';

export interface ControlRequest {
  readonly op: string;
  readonly [key: string]: unknown;
}

export type ControlReply = { readonly progress: unknown } | { readonly result: unknown } | { readonly error: string };

export type ControlHandler = (request: ControlRequest, progress: (p: unknown) => void) => Promise<unknown>;

export function controlSocketPath(mountpoint: string, env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_RUNTIME_DIR || os.tmpdir();
  const uid = typeof process.getuid === 'function' ? process.getuid() : 0;
  const hash = crypto.createHash('sha256').update(path.resolve(mountpoint)).digest('hex').slice(0, 24);
  return path.join(base, `blobdisk-${uid}`, `${hash}.sock`);
}

export class ControlServer {
  private constructor(
    private readonly server: net.Server,
    readonly socketPath: string,
  ) {}

  static async listen(socketPath: string, handler: ControlHandler): Promise<ControlServer> {
    fs.mkdirSync(path.dirname(socketPath), { recursive: true, mode: 0o700 });
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
    return new ControlServer(server, socketPath);
  }

  /** Stops listening and waits (a few seconds at most) for open requests to be answered. */
  async close(): Promise<void> {
    fs.rmSync(this.socketPath, { force: true });
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
  return new Promise((resolve, reject) => {
    const socket = net.connect(controlSocketPath(mountpoint));
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
