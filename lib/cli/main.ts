/* blobdisk's command line: yargs parses, lib/options.ts validates, each command returns
 * an exit code. Failures print one line, "blobdisk: <what went wrong; what to do>", with
 * secrets masked; only bin/blobdisk turns the code into the process's exit. */

import yargs from 'yargs';
import { UsageError, errorMessage, isBlobdiskError, isUsageError } from '../errors';
import { Io, say } from './io';

// Each command's module is loaded when it runs: the Azure SDK alone takes most of a second
// to load, which `flush`, `status` and `unmount` (a control-socket request) do not need.
const commands = {
  mount: (): typeof import('./mount') => require('./mount') as typeof import('./mount'),
  unmount: (): typeof import('./unmount') => require('./unmount') as typeof import('./unmount'),
  flush: (): typeof import('./flush') => require('./flush') as typeof import('./flush'),
  status: (): typeof import('./status') => require('./status') as typeof import('./status'),
};

export async function main(argv: string[], io: Io = { stdout: process.stdout, stderr: process.stderr, env: process.env }): Promise<number> {
  let exitCode = 0;
  const run = (command: Promise<number>): Promise<void> => command.then((code) => void (exitCode = code));
  const parser = yargs(argv)
    .scriptName('blobdisk')
    .usage('$0 <command> [options]\n\nMounts Azure Storage page and block blobs as local disk-image files.')
    .command(
      'mount <mountpoint>',
      'mount blobs at <mountpoint> (runs in the foreground; Ctrl-C unmounts)',
      (y) =>
        y
          .positional('mountpoint', { type: 'string', demandOption: true, describe: 'an existing, empty directory' })
          .option('connection-string', { type: 'string', describe: 'storage connection string (or env AZURE_STORAGE_CONNECTION_STRING)' })
          .option('account', { type: 'string', describe: 'storage account name (with --account-key or --sas)' })
          .option('account-key', { type: 'string', describe: 'account key' })
          .option('sas', { type: 'string', describe: 'SAS token (account or container)' })
          .option('endpoint', { type: 'string', describe: 'blob endpoint URL for --account (default https://NAME.blob.core.windows.net)' })
          .option('container', { type: 'string', describe: 'mount this container as the root (default: one directory per container)' })
          .option('data-dir', { type: 'string', describe: 'where blobdisk keeps its state (default ~/.local/share/blobdisk or $BLOBDISK_HOME)' })
          .option('cache-dir', { type: 'string', describe: 'local grain cache (default DATA_DIR/cache)' })
          .option('cache-size', { type: 'string', describe: 'cache bound, e.g. 10G (default 10G)' })
          .option('grain-size', { type: 'string', describe: 'caching unit, a power of two, e.g. 1M (default 1M)' })
          .option('read-ahead', { type: 'string', describe: 'how far to read ahead of a sequential reader, e.g. 16M (default 16 grains)' })
          .option('read-only', { type: 'boolean', describe: 'refuse every change with EROFS' })
          .option('allow-other', { type: 'boolean', describe: 'let other users (e.g. libvirt-qemu) use the mount, within --uid/--gid and the modes' })
          .option('uid', { type: 'string', describe: 'owner of every file and directory, a user name or number (default: who mounts)' })
          .option('gid', { type: 'string', describe: 'group of every file and directory, a group name or number (default: who mounts)' })
          .option('file-mode', { type: 'string', describe: 'permission bits of files, octal (default 0644)' })
          .option('dir-mode', { type: 'string', describe: 'permission bits of directories, octal (default 0755)' })
          .option('sync', { type: 'string', choices: ['local', 'cloud'], describe: 'what fsync waits for: the local disk (default; uploaded later) or Azure' })
          .option('write-back-delay', { type: 'number', describe: 'seconds written data waits before its background upload (default 0.5)' })
          .option('dir-cache-time', { type: 'number', describe: 'seconds listings and attributes are trusted before Azure is asked again (default 5)' })
          .option('drain-timeout', { type: 'number', describe: 'unmount gives up after this many seconds without upload progress (default 60)' })
          .option('page-blob-pattern', {
            type: 'string',
            array: true,
            describe: "new files matching these names become page blobs (default '*.img' '*.raw' '*.vhd' '*.vmdk' '*.qcow2' '*.vdi')",
          })
          .option('log-level', { type: 'string', choices: ['debug', 'info', 'warn', 'error', 'silent'], describe: 'default info' }),
      (args) => run(commands.mount().mountCommand(args, io)),
    )
    .command(
      'unmount <mountpoint>',
      'unmount a running blobdisk mount cleanly',
      (y) => y.positional('mountpoint', { type: 'string', demandOption: true }),
      (args) => run(commands.unmount().unmountCommand(args.mountpoint, io)),
    )
    .command(
      'flush <mountpoint> [path]',
      'wait until everything written so far is in Azure',
      (y) => y.positional('mountpoint', { type: 'string', demandOption: true }).positional('path', { type: 'string', describe: 'only this file' }),
      (args) => run(commands.flush().flushCommand(args.mountpoint, args.path, io)),
    )
    .command(
      'status <mountpoint>',
      'show per-image size, cached bytes and traffic of a running mount',
      (y) => y.positional('mountpoint', { type: 'string', demandOption: true }).option('json', { type: 'boolean', describe: 'print JSON for scripts' }),
      (args) => run(commands.status().statusCommand(args.mountpoint, args.json === true, io)),
    )
    .demandCommand(1, 'give a command: mount, unmount, flush or status')
    .strict()
    .help()
    .version()
    .exitProcess(false)
    .fail((message, error) => {
      throw error ?? new UsageError(`${message}; see blobdisk --help`, 2);
    });
  try {
    await parser.parseAsync();
    return exitCode;
  } catch (e) {
    if (isUsageError(e)) {
      say(io, e.message);
      return e.exitCode;
    }
    say(io, isBlobdiskError(e) ? e.message : `unexpected failure: ${errorMessage(e)}`);
    return 1;
  }
}
