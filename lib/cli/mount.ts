/* `blobdisk mount`: validate, mount, say one line when ready, serve until Ctrl-C, SIGTERM,
 * `blobdisk unmount` or an outside `fusermount -u`, then unmount and return 0. */

import { createLogger } from '../log';
import { mount } from '../mount';
import { MountArgs, parseMountOptions } from '../options';
import { formatSize } from '../units';
import { Io, say } from './io';
import { uploadProgress } from './progress';

export async function mountCommand(args: MountArgs, io: Io): Promise<number> {
  const options = parseMountOptions(args, io.env);
  const log = createLogger(options.logLevel, io.stderr);
  const mounted = await mount(options, log);
  const what = options.container !== undefined ? `container ${options.container}` : 'all containers';
  const stop = (signal: string): void => {
    log.info(`${signal}: uploading what is left, then unmounting ${options.mountpoint}`);
    const progress = uploadProgress(io, 'draining');
    void mounted.unmount((p) => progress.update(p)).finally(() => progress.stop());
  };
  const onInt = (): void => stop('SIGINT');
  const onTerm = (): void => stop('SIGTERM');
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);
  say(
    io,
    `mounted ${what} at ${options.mountpoint} (cache ${options.cache.dir}, ${formatSize(options.cache.sizeBytes)}, grain ${formatSize(options.cache.grainSize)}` +
      `${options.readOnly ? ', read-only' : ''}); Ctrl-C or 'blobdisk unmount ${options.mountpoint}' to stop`,
  );
  let result;
  try {
    result = await mounted.ended;
  } finally {
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onTerm);
  }
  if (!result.drained) {
    say(
      io,
      `unmounted ${options.mountpoint}, but ${formatSize(result.dirtyBytes)} could not be uploaded (${result.reason ?? 'Azure unreachable'}); ` +
        `it stays in ${options.cache.dir} and uploads at the next mount with that --cache-dir`,
    );
    return 3;
  }
  say(io, `unmounted ${options.mountpoint}`);
  return 0;
}
