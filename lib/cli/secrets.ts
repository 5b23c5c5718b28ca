/* Secrets given on the command line (--account-key, --sas, --connection-string) are visible
 * to every local user in /proc/PID/cmdline and `ps`. Once parsed, the mount rewrites its
 * command line without them (process.title writes over the original argv memory), and a
 * --daemon child gets them through its environment, which only its owner can read. */

import { MOUNT_FLAGS, envName } from './flags';

const SECRET_FLAGS = new Set(MOUNT_FLAGS.filter((f) => f.secret === true).map((f) => `--${f.name}`));

/** `argv` split into the arguments without secrets and the secrets as BLOBDISK_* variables. */
export function splitSecrets(argv: readonly string[]): { args: string[]; env: Record<string, string> } {
  const args: string[] = [];
  const env: Record<string, string> = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] ?? '';
    const eq = a.indexOf('=');
    const name = eq < 0 ? a : a.slice(0, eq);
    if (!SECRET_FLAGS.has(name)) {
      args.push(a);
      continue;
    }
    const value = eq < 0 ? argv[++i] : a.slice(eq + 1);
    if (value !== undefined) env[envName(name.slice(2))] = value;
  }
  return { args, env };
}

/** Rewrites this process's command line with every secret shown as ***. */
export function hideSecretsFromCommandLine(argv: readonly string[]): void {
  const { args, env } = splitSecrets(argv);
  if (Object.keys(env).length === 0) return;
  const masked = Object.keys(env).flatMap((k) => [`--${k.slice('BLOBDISK_'.length).toLowerCase().replace(/_/g, '-')}`, '***']);
  process.title = ['blobdisk', ...args, ...masked].join(' ');
}
