/* `blobdisk mount --print-config`: the settings a mount would run with, after flags,
 * environment, --config file and defaults, as a YAML file that --config accepts again.
 * Secrets show as ***, never as given. */

import type { MountOptions } from '../config';
import type { RunSettings } from './daemon';
import { formatSize } from '../units';

const MASK = '***';

/** 10 GiB → 10G, 1 MiB → 1M: sizes as the flags take them. */
function sizeText(bytes: number): string {
  for (const [unit, n] of [['T', 2 ** 40], ['G', 2 ** 30], ['M', 2 ** 20], ['K', 2 ** 10]] as const) {
    if (bytes >= n && bytes % n === 0) return `${bytes / n}${unit}`;
  }
  return formatSize(bytes).replace(/\s/g, '');
}

const octal = (mode: number): string => `0${mode.toString(8).padStart(3, '0')}`;

/** The effective settings, keyed by flag name, secrets masked. */
export function effectiveSettings(o: MountOptions): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const c = o.credentials;
  if (c === undefined) {
    // No credentials: nothing to print (the embedded Azurite).
  } else if (c.kind === 'connectionString') out['connection-string'] = MASK;
  else {
    out.account = c.account;
    out[c.kind === 'accountKey' ? 'account-key' : 'sas'] = MASK;
    out.endpoint = c.endpoint;
  }
  if (o.container !== undefined) out.container = o.container;
  out['data-dir'] = o.dataDir;
  out['cache-dir'] = o.cache.dir;
  out['cache-size'] = sizeText(o.cache.sizeBytes);
  out['grain-size'] = sizeText(o.cache.grainSize);
  out['read-ahead'] = sizeText(o.read.readAheadGrains * o.cache.grainSize);
  out.sync = o.write.sync;
  out['write-back-delay'] = o.write.writeBackDelayMs / 1000;
  out['drain-timeout'] = o.write.drainTimeoutMs / 1000;
  out['page-blob-pattern'] = [...o.write.pageBlobPatterns];
  out['read-only'] = o.readOnly;
  out['allow-other'] = o.access.allowOther;
  out.uid = o.access.uid;
  out.gid = o.access.gid;
  out['file-mode'] = octal(o.access.fileMode);
  out['dir-mode'] = octal(o.access.dirMode);
  out['dir-cache-time'] = o.attrTtlMs / 1000;
  out['io-timeout'] = o.ioTimeoutMs / 1000;
  out['log-level'] = o.logLevel;
  if (o.warmFrom.length > 0) out['warm-from'] = [...o.warmFrom];
  if (o.metricsAddr !== undefined) out['metrics-addr'] = `${o.metricsAddr.host.includes(':') ? `[${o.metricsAddr.host}]` : o.metricsAddr.host}:${o.metricsAddr.port}`;
  return out;
}

function runSettings(run: RunSettings): Record<string, unknown> {
  return {
    daemon: run.daemon,
    ...(run.logFile !== undefined ? { 'log-file': run.logFile } : {}),
    ...(run.pidFile !== undefined ? { 'pid-file': run.pidFile } : {}),
  };
}

export function printConfig(o: MountOptions, run: RunSettings): string {
  const note = o.credentials === undefined ? '# no Azure credentials: the mount would start the embedded Azurite\n' : '';
  // Loaded only here and for a --config file: a mount without either never needs it.
  const YAML = require('yaml') as typeof import('yaml');
  return `# blobdisk mount ${o.mountpoint}: flags over BLOBDISK_* environment over --config file over defaults\n${note}${YAML.stringify({ ...effectiveSettings(o), ...runSettings(run) })}`;
}
