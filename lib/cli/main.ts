/* blobdisk's command line: yargs parses, lib/options.ts validates, each command returns
 * an exit code. Failures print one line, "blobdisk: <what went wrong; what to do>", with
 * secrets masked; only bin/blobdisk turns the code into the process's exit. */

import yargs from 'yargs';
import { UsageError, errorMessage, isBlobdiskError, isUsageError } from '../errors';
import { GROUPS, MOUNT_FLAGS } from './flags';
import { Io, say } from './io';

// Each command's module is loaded when it runs: the Azure SDK alone takes most of a second
// to load, which `flush`, `status` and `unmount` (a control-socket request) do not need.
const commands = {
  mount: (): typeof import('./mount') => require('./mount') as typeof import('./mount'),
  unmount: (): typeof import('./unmount') => require('./unmount') as typeof import('./unmount'),
  flush: (): typeof import('./flush') => require('./flush') as typeof import('./flush'),
  status: (): typeof import('./status') => require('./status') as typeof import('./status'),
  recover: (): typeof import('./recover') => require('./recover') as typeof import('./recover'),
};

/** `blobdisk mount`'s flags from lib/cli/flags.ts, grouped as in the help, with examples. */
function mountFlags<T>(y: yargs.Argv<T>) {
  let out = y
    .positional('mountpoint', { type: 'string', demandOption: true, describe: 'an existing, empty directory' })
    .option('config', { type: 'string', describe: 'a YAML file of settings, named like these flags (also BLOBDISK_CONFIG)' })
    .option('print-config', { type: 'boolean', describe: 'print the settings the mount would use (secrets masked) and exit' });
  for (const f of MOUNT_FLAGS) {
    out = out.option(f.name, {
      type: f.type === 'array' ? 'string' : f.type,
      ...(f.type === 'array' ? { array: true } : {}),
      describe: f.describe,
      ...(f.shown !== undefined ? { defaultDescription: f.shown } : {}),
      ...(f.choices !== undefined ? { choices: [...f.choices] } : {}),
    });
  }
  for (const group of GROUPS) {
    const names = MOUNT_FLAGS.filter((f) => f.group === group).map((f) => f.name);
    if (group === 'Running:') names.push('config', 'print-config');
    if (names.length > 0) out = out.group(names, group);
  }
  return out
    .epilogue('Every flag can also be set as BLOBDISK_<NAME> (e.g. BLOBDISK_CACHE_SIZE=20G) or in the --config file (cache-size: 20G); flags win over the environment, the environment over the file.')
    .example('$0 mount /mnt/blobs', 'mount the embedded Azurite (no credentials given)')
    .example('$0 mount /mnt/blobs --connection-string "$CONN" --container vms', 'one container of an Azure account as the root')
    .example('$0 mount /mnt/blobs --allow-other --uid libvirt-qemu --gid libvirt-qemu', 'a mount libvirt guests can use')
    .example('$0 mount /mnt/blobs --config /etc/blobdisk.yaml --print-config', 'show the settings a config file gives');
}

export async function main(argv: string[], io: Io = { stdout: process.stdout, stderr: process.stderr, env: process.env }): Promise<number> {
  let exitCode = 0;
  const run = (command: Promise<number>): Promise<void> => command.then((code) => void (exitCode = code));
  const parser = yargs(argv)
    .scriptName('blobdisk')
    .usage('$0 <command> [options]\n\nMounts Azure Storage page and block blobs as local disk-image files.')
    .command(
      'mount <mountpoint>',
      'mount blobs at <mountpoint> (runs in the foreground; Ctrl-C unmounts)',
      (y) => mountFlags(y),
      (args) => run(commands.mount().mountCommand(args, io, argv)),
    )
    .command(
      'unmount <mountpoint>',
      'upload what is still dirty, then unmount (exit 3 when Azure could not take it all)',
      (y) =>
        y
          .positional('mountpoint', { type: 'string', demandOption: true })
          .example('$0 unmount /mnt/blobs', 'drain to Azure with progress, release the leases, unmount'),
      (args) => run(commands.unmount().unmountCommand(args.mountpoint, io)),
    )
    .command(
      'flush <mountpoint> [path]',
      'wait until everything written so far is in Azure',
      (y) =>
        y
          .positional('mountpoint', { type: 'string', demandOption: true })
          .positional('path', { type: 'string', describe: 'only this file' })
          .option('timeout', { type: 'number', describe: 'give up when nothing could be uploaded for this many seconds', defaultDescription: "the mount's --drain-timeout" })
          .example('$0 flush /mnt/blobs', 'wait until everything written to the mount is in Azure')
          .example('$0 flush /mnt/blobs vms/disk.img', 'the same for one image'),
      (args) => run(commands.flush().flushCommand(args.mountpoint, args.path, io, args.timeout)),
    )
    .command(
      'status <mountpoint>',
      'show per-image size, cached bytes and traffic of a running mount',
      (y) =>
        y
          .positional('mountpoint', { type: 'string', demandOption: true })
          .option('json', { type: 'boolean', describe: 'print JSON for scripts' })
          .option('watch', { type: 'number', describe: 'redraw every SECONDS until Ctrl-C', defaultDescription: 'off; 2 when given alone' })
          .coerce('watch', (v: number | undefined) => (v === undefined || Number.isNaN(v) ? 2 : v))
          .example('$0 status /mnt/blobs', 'cache use, dirty data and traffic per image')
          .example('$0 status /mnt/blobs --watch 1', 'the same, redrawn every second'),
      (args) => run(commands.status().statusCommand(args.mountpoint, args.json === true, io, args.watch)),
    )
    .command(
      'recover <mountpoint> <image>',
      'resolve an image whose local changes cannot go to Azure (changed elsewhere, deleted, refused)',
      (y) =>
        y
          .positional('mountpoint', { type: 'string', demandOption: true })
          .positional('image', { type: 'string', demandOption: true, describe: 'the image, as a path in the mount or relative to it' })
          .option('to', { type: 'string', describe: "first save the local version as this new blob in the image's container (refused if it exists)" })
          .option('discard', { type: 'boolean', describe: 'drop the local changes without saving them' })
          .epilogue("Either way the image then shows Azure's current version and unmount can exit 0. Stop writers of the image first.")
          .example('$0 recover /mnt/blobs vms/disk.img --to vms/disk-local.img', 'keep both: Azure\'s version as disk.img, ours as disk-local.img')
          .example('$0 recover /mnt/blobs vms/disk.img --discard', 'throw the local changes away'),
      (args) => run(commands.recover().recoverCommand(args.mountpoint, args.image, io, { ...(args.to !== undefined ? { to: args.to } : {}), ...(args.discard !== undefined ? { discard: args.discard } : {}) })),
    )
    .example('$0 mount /mnt/blobs', 'mount on the embedded Azurite (no credentials given)')
    .example('$0 mount /mnt/blobs --help', "every flag of mount, grouped, with its default")
    .epilogue("Each command's own --help lists its flags and examples. Docs: README.md")
    .demandCommand(1, 'give a command: mount, unmount, flush, status or recover')
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
