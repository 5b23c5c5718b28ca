/* `blobdisk mount`: validate, mount, say one line when ready, serve until Ctrl-C, SIGTERM,
 * `blobdisk unmount` or an outside `fusermount -u`, then unmount and return 0. */

import { createLogger } from '../log';
import { mount } from '../mount';
import { MountArgs, parseMountOptions } from '../options';
import { formatSize } from '../units';
import { Io, say } from './io';

export async function mountCommand(args: MountArgs, io: Io): Promise<number> {
  const options = parseMountOptions(args, io.env);
  const log = createLogger(options.logLevel, io.stderr);
  const mounted = await mount(options, log);
  const what = options.container !== undefined ? `container ${options.container}` : 'all containers';
  say(
    io,
    `mounted ${what} at ${options.mountpoint} (cache ${options.cache.dir}, ${formatSize(options.cache.sizeBytes)}, grain ${formatSize(options.cache.grainSize)}` +
      `${options.readOnly ? ', read-only' : ''}); Ctrl-C or 'blobdisk unmount ${options.mountpoint}' to stop`,
  );
  const stop = (signal: string): void => {
    log.info(`${signal}: unmounting ${options.mountpoint}`);
    void mounted.unmount();
  };
  const onInt = (): void => stop('SIGINT');
  const onTerm = (): void => stop('SIGTERM');
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);
  try {
    await mounted.ended;
  } finally {
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onTerm);
  }
  say(io, `unmounted ${options.mountpoint}`);
  return 0;
}
