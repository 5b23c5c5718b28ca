/* Upload progress for flush and unmount: a bar on a terminal (cli-progress), plain lines
 * (at most one a second) otherwise, so logs and scripts stay readable. */

import { FlushProgress } from '../flusher/flusher';
import { formatSize } from '../units';
import { Io, say } from './io';

export interface Progress {
  update(p: FlushProgress): void;
  stop(): void;
}

export function uploadProgress(io: Io, label: string): Progress {
  const stream = io.stderr as NodeJS.WriteStream;
  if (stream.isTTY) {
    // Loaded only for a terminal: the mount itself and scripts never draw a bar.
    const cliProgress = require('cli-progress') as typeof import('cli-progress');
    const bar = new cliProgress.SingleBar(
      { stream, format: `${label} [{bar}] {percentage}% | {done} of {total}`, hideCursor: true, clearOnComplete: false },
      cliProgress.Presets.shades_classic,
    );
    let started = false;
    return {
      update: (p) => {
        const total = Math.max(p.startBytes, 1);
        const done = Math.max(0, p.startBytes - p.dirtyBytes);
        if (!started) {
          bar.start(total, done, { done: formatSize(done), total: formatSize(p.startBytes) });
          started = true;
        }
        bar.update(done, { done: formatSize(done), total: formatSize(p.startBytes) });
      },
      stop: () => {
        if (started) bar.stop();
      },
    };
  }
  let last = 0;
  let lastBytes = -1;
  return {
    update: (p) => {
      const now = Date.now();
      if (p.startBytes === 0 || p.dirtyBytes === lastBytes || (now - last < 1000 && p.dirtyBytes !== 0)) return;
      last = now;
      lastBytes = p.dirtyBytes;
      say(io, `${label}: ${formatSize(p.dirtyBytes)} of ${formatSize(p.startBytes)} left to upload`);
    },
    stop: () => undefined,
  };
}
