/* Where commands print: passed in, so tests can capture it. */

import { redact } from '../redact';

export interface Io {
  readonly stdout: NodeJS.WritableStream;
  readonly stderr: NodeJS.WritableStream;
  readonly env: NodeJS.ProcessEnv;
}

/** One line for the user on stderr, secrets masked. */
export function say(io: Io, line: string): void {
  io.stderr.write(`blobdisk: ${redact(line)}\n`);
}
