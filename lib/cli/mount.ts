/* `blobdisk mount`: validate, mount, say one line when ready, serve until Ctrl-C, SIGTERM,
 * `blobdisk unmount` or an outside `umount` or `fusermount3 -u`, then unmount and return 0. */

import fsp from 'node:fs/promises';
import path from 'node:path';
import { UsageError } from '../errors';
import { createLogger } from '../log';
import { mount } from '../mount';
import { parseMountOptions } from './options';
import { formatSize } from '../units';
import { Io, say } from './io';
import { printConfig } from './print-config';
import { uploadProgress } from './progress';
import { RunSettings, detach, isDaemonChild, removePidFile, reportReady } from './daemon';
import { hideSecretsFromCommandLine } from './secrets';
import { mergeSettings, parseConfigFile } from './settings';

/** The command line of `blobdisk mount` as yargs hands it over. */
export interface MountCommandArgs extends Record<string, unknown> {
  mountpoint: string;
  config?: string | undefined;
  printConfig?: boolean | undefined;
}

/** Reads the --config file (or BLOBDISK_CONFIG) when one is named. */
async function configFile(args: MountCommandArgs, io: Io): Promise<ReturnType<typeof parseConfigFile>> {
  const file = args.config ?? io.env.BLOBDISK_CONFIG;
  if (file === undefined || file === '') return {};
  let text: string;
  try {
    text = await fsp.readFile(path.resolve(file), 'utf8');
  } catch (e) {
    throw new UsageError(`cannot read the config file ${file} (${(e as NodeJS.ErrnoException).code ?? 'error'}); check the path given to --config`);
  }
  return parseConfigFile(text, file);
}

export async function mountCommand(args: MountCommandArgs, io: Io, argv: readonly string[] = []): Promise<number> {
  // Everything a mount creates (cache, grain map, grain files, the embedded Azurite's data,
  // logs) holds disk data or secrets: readable by its owner only, whatever the umask was.
  process.umask(0o077);
  hideSecretsFromCommandLine(argv);
  const settings = mergeSettings(args, io.env, await configFile(args, io));
  const options = parseMountOptions(settings, io.env);
  const child = isDaemonChild(io.env);
  const run: RunSettings = {
    daemon: settings.daemon === true && !child,
    logFile: settings.logFile !== undefined ? path.resolve(settings.logFile) : undefined,
    pidFile: settings.pidFile !== undefined ? path.resolve(settings.pidFile) : undefined,
  };
  if (args.printConfig === true) {
    io.stdout.write(printConfig(options, run));
    return 0;
  }
  if (run.daemon) return detach(argv, run.logFile ?? path.join(options.dataDir, 'blobdisk.log'), io);
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
  const ready =
    `mounted ${what} at ${options.mountpoint} (cache ${options.cache.dir}, ${formatSize(options.cache.sizeBytes)}, grain ${formatSize(options.cache.grainSize)}` +
    `${options.readOnly ? ', read-only' : ''})`;
  say(io, `${ready}; ${child ? '' : "Ctrl-C or "}'blobdisk unmount ${options.mountpoint}' to stop`);
  let result;
  try {
    await reportReady(run, ready);
    result = await mounted.ended;
  } finally {
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onTerm);
    await removePidFile(run);
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
