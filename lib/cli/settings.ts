/* Where mount settings come from, in this order of precedence: flags on the command line,
 * then BLOBDISK_* environment variables, then a --config file (YAML, the flags' names as
 * keys). The result is the same MountArgs the flags alone would give; lib/options.ts then
 * validates it. The file is read with YAML's failsafe schema, so every value arrives as
 * text and is typed here by its flag: `file-mode: 0644` stays octal, as on the command line. */

import { UsageError } from '../errors';
import type { MountArgs } from './options';
import { Flag, MOUNT_FLAGS, camel, envName } from './flags';

type Value = string | number | boolean | string[];

/** The flags that say how the mount process runs, not what it mounts. */
export interface RunArgs {
  daemon?: boolean | undefined;
  logFile?: string | undefined;
  pidFile?: string | undefined;
}

const TRUE = new Set(['true', 'yes', 'on', '1']);
const FALSE = new Set(['false', 'no', 'off', '0']);

/** Types a text from the environment or a file by its flag; `where` names it in errors. */
function typed(flag: Flag, raw: unknown, where: string): Value {
  if (flag.type === 'array') {
    if (Array.isArray(raw)) return raw.map(String);
    return String(raw).split(/[\s,]+/).filter((s) => s !== '');
  }
  if (typeof raw !== 'string') throw new UsageError(`${where} must be a single value, not a list or a map`);
  const text = raw.trim();
  if (flag.type === 'boolean') {
    if (TRUE.has(text.toLowerCase())) return true;
    if (FALSE.has(text.toLowerCase())) return false;
    throw new UsageError(`${where} must be true or false, not ${JSON.stringify(text)}`);
  }
  if (flag.type === 'number') {
    const n = Number(text);
    if (text === '' || !Number.isFinite(n)) throw new UsageError(`${where} must be a number, not ${JSON.stringify(text)}`);
    return n;
  }
  return text;
}

/** The settings of a --config file, keyed like MountArgs. */
export function parseConfigFile(text: string, file: string): Partial<Record<string, Value>> {
  let doc: unknown;
  try {
    // Loaded only when there is a file: a mount without one never needs the parser.
    const YAML = require('yaml') as typeof import('yaml');
    doc = YAML.parse(text, { schema: 'failsafe' });
  } catch (e) {
    const line = (e as { linePos?: { line: number }[] }).linePos?.[0]?.line;
    throw new UsageError(`${file}${line !== undefined ? ` line ${line}` : ''} is not valid YAML; write one "name: value" per line, e.g. cache-size: 20G`);
  }
  if (doc === null || doc === undefined || doc === '') return {};
  if (typeof doc !== 'object' || Array.isArray(doc)) throw new UsageError(`${file} must hold "name: value" lines, e.g. cache-size: 20G`);
  const out: Partial<Record<string, Value>> = {};
  for (const [key, raw] of Object.entries(doc as Record<string, unknown>)) {
    const flag = MOUNT_FLAGS.find((f) => f.name === key);
    if (flag === undefined) {
      throw new UsageError(`${file}: unknown setting ${JSON.stringify(key)}; the settings are the names of blobdisk mount's flags, e.g. cache-size (see blobdisk mount --help)`);
    }
    out[camel(key)] = typed(flag, raw, `${key} in ${file}`);
  }
  return out;
}

/** The settings given as BLOBDISK_* environment variables, keyed like MountArgs. */
export function settingsFromEnv(env: NodeJS.ProcessEnv): Partial<Record<string, Value>> {
  const out: Partial<Record<string, Value>> = {};
  for (const flag of MOUNT_FLAGS) {
    const raw = env[envName(flag.name)];
    if (raw !== undefined && raw !== '') out[camel(flag.name)] = typed(flag, raw, envName(flag.name));
  }
  return out;
}

/** Flags over environment over file, for every mount flag; the rest of `flags` (the
 *  mountpoint) is kept as it is. */
export function mergeSettings(flags: Record<string, unknown>, env: NodeJS.ProcessEnv, file: Partial<Record<string, Value>> = {}): MountArgs & RunArgs {
  const fromEnv = settingsFromEnv(env);
  const out: Record<string, unknown> = { mountpoint: flags.mountpoint };
  for (const flag of MOUNT_FLAGS) {
    const key = camel(flag.name);
    const value = flags[key] ?? fromEnv[key] ?? file[key];
    if (value !== undefined) out[key] = value;
  }
  return out as unknown as MountArgs & RunArgs;
}
