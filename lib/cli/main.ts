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
  snapshot: (): typeof import('./snapshot') => require('./snapshot') as typeof import('./snapshot'),
  clone: (): typeof import('./clone') => require('./clone') as typeof import('./clone'),
  diff: (): typeof import('./diff') => require('./diff') as typeof import('./diff'),
  rm: (): typeof import('./rm') => require('./rm') as typeof import('./rm'),
  recover: (): typeof import('./recover') => require('./recover') as typeof import('./recover'),
  handoff: (): typeof import('./handoff') => require('./handoff') as typeof import('./handoff'),
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
    .example('$0 mount /mnt/blobs --config /etc/blobdisk.yaml --print-config', 'show the settings a config file gives')
    .example('$0 mount /mnt/blobs --warm-from /tmp/disk.handoff', 'take over an image another host handed off, and prefetch its hot grains');
}

/** snapshot, clone, diff and rm: requests to a running mount (README: Snapshots, clones and backups). */
function withBackupCommands<T>(parser: yargs.Argv<T>, io: Io, run: (command: Promise<number>) => Promise<void>): yargs.Argv<T> {
  const timeout = { type: 'number', describe: 'give up flushing when nothing could be uploaded for this many seconds', defaultDescription: "the mount's --drain-timeout" } as const;
  return parser
    .command(
      'snapshot <mountpoint> <image> [snapshot]',
      'flush an image and take an Azure snapshot of it (or --delete one)',
      (y) =>
        y
          .positional('mountpoint', { type: 'string', demandOption: true })
          .positional('image', { type: 'string', demandOption: true, describe: 'the image, as a path in the mount' })
          .positional('snapshot', { type: 'string', describe: 'with --delete: the snapshot (its name under .snapshots, or its time)' })
          .option('name', { type: 'string', describe: 'name the snapshot (shown under .snapshots); default its UTC time' })
          .option('delete', { type: 'boolean', describe: 'delete the snapshot given instead of taking one' })
          .option('timeout', timeout)
          .option('json', { type: 'boolean', describe: 'print JSON for scripts' })
          .example('$0 snapshot /mnt/blobs vms/disk.img --name before-upgrade', 'then read /mnt/blobs/vms/.snapshots/disk.img/before-upgrade')
          .example('$0 snapshot --delete /mnt/blobs vms/disk.img before-upgrade', 'delete that snapshot'),
      (a) => run(commands.snapshot().snapshotCommand(a, io)),
    )
    .command(
      'clone <mountpoint> <source> <target>',
      'make a new image by a server-side copy of a snapshot or an image',
      (y) =>
        y
          .positional('mountpoint', { type: 'string', demandOption: true })
          .positional('source', { type: 'string', demandOption: true, describe: 'a snapshot (…/.snapshots/<image>/<name>) or an image' })
          .positional('target', { type: 'string', demandOption: true, describe: 'the new image, as a path in the mount' })
          .option('timeout', timeout)
          .option('json', { type: 'boolean', describe: 'print JSON for scripts' })
          .example('$0 clone /mnt/blobs vms/.snapshots/disk.img/before-upgrade vms/test.img', 'a writable copy of a snapshot')
          .example('$0 clone /mnt/blobs vms/golden.img vms/vm7.img', 'a copy of an image as it is now (snapshot, then copy)'),
      (a) => run(commands.clone().cloneCommand(a, io)),
    )
    .command(
      'diff <mountpoint> <image>',
      'list the byte ranges of an image changed since one of its snapshots',
      (y) =>
        y
          .positional('mountpoint', { type: 'string', demandOption: true })
          .positional('image', { type: 'string', demandOption: true })
          .option('since', { type: 'string', demandOption: true, describe: 'the snapshot (its name under .snapshots, or its time)' })
          .option('compare', { type: 'string', choices: ['auto', 'service', 'listings', 'bytes'], default: 'auto', describe: "service: Azure's page-range diff; listings: compare the two page-range listings; bytes: listings, then compare the data both hold; auto: service on Azure, bytes on Azurite; block blobs: by their block lists, or bytes" })
          .option('json', { type: 'boolean', describe: 'print JSON for scripts' })
          .option('timeout', timeout)
          .example('$0 diff /mnt/blobs vms/disk.img --since nightly-1', 'lines "changed|cleared|unverified OFFSET LENGTH"')
          .example('$0 diff /mnt/blobs vms/disk.img --since nightly-1 --json', 'the same as JSON, with the method used'),
      (a) => run(commands.diff().diffCommand(a, io)),
    )
    .command(
      'rm <mountpoint> <image>',
      'delete an image (refused while it has snapshots, unless --with-snapshots)',
      (y) =>
        y
          .positional('mountpoint', { type: 'string', demandOption: true })
          .positional('image', { type: 'string', demandOption: true })
          .option('with-snapshots', { type: 'boolean', describe: 'delete its snapshots too' })
          .example('$0 rm /mnt/blobs vms/old.img --with-snapshots', 'the image and all its snapshots'),
      (a) => run(commands.rm().rmCommand(a, io)),
    )
    .command(
      'handoff <mountpoint> <image>',
      'drain an image, release its lease and write a handoff file for the next host',
      (y) =>
        y
          .positional('mountpoint', { type: 'string', demandOption: true })
          .positional('image', { type: 'string', demandOption: true })
          .option('to', { type: 'string', describe: 'write the handoff file here', defaultDescription: './<image>.handoff.json' })
          .option('timeout', timeout)
          .example('$0 handoff /mnt/blobs vms/disk.img --to /tmp/disk.handoff', 'then on the next host: blobdisk mount /mnt/blobs --warm-from /tmp/disk.handoff'),
      (a) => run(commands.handoff().handoffCommand(a, io)),
    );
}

export async function main(argv: string[], io: Io = { stdout: process.stdout, stderr: process.stderr, env: process.env }): Promise<number> {
  let exitCode = 0;
  const run = (command: Promise<number>): Promise<void> => command.then((code) => void (exitCode = code));
  const commandsBefore = yargs(argv)
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
    );
  const parser = withBackupCommands(commandsBefore, io, run)
    .example('$0 mount /mnt/blobs', 'mount on the embedded Azurite (no credentials given)')
    .example('$0 mount /mnt/blobs --help', "every flag of mount, grouped, with its default")
    .epilogue("Each command's own --help lists its flags and examples. Docs: README.md")
    .demandCommand(1, 'give a command: mount, unmount, flush, status, recover, snapshot, clone, diff, rm or handoff')
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
