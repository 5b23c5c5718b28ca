/* End to end: every bad input to `blobdisk mount` is refused with one line on stderr that
 * starts with "blobdisk: ", a non-zero exit, nothing mounted, no process, control socket or
 * cache lock left behind, and no secret (account key, SAS signature) in the output. */

import { BlobServiceClient } from '@azure/storage-blob';
import crypto from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { AZURITE_ACCOUNT, AZURITE_KEY, startAzurite, type RunningAzurite } from '../../lib/azurite';
import { controlSocketPath } from '../../lib/control';
import {
  cliEnv,
  closedPort,
  isMounted,
  lines,
  makeTempDir,
  processesMentioning,
  removeTempDirs,
  runCli,
  sh,
  startMount,
  stopAllMounts,
  type RunResult,
} from '../support/mount';

let azurite: RunningAzurite;

beforeAll(async () => {
  azurite = await startAzurite({ inMemory: true });
  await BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient('disks').create();
});

afterAll(async () => {
  await stopAllMounts();
  await azurite?.stop();
  await removeTempDirs();
});

interface Place {
  readonly base: string;
  readonly mnt: string;
  readonly cache: string;
  readonly data: string;
}

/** A fresh directory with an empty mountpoint in it; cache and data dirs are not created. */
async function place(): Promise<Place> {
  const base = await makeTempDir('blobdisk-bad-');
  const mnt = path.join(base, 'mnt');
  await fsp.mkdir(mnt);
  return { base, mnt, cache: path.join(base, 'cache'), data: path.join(base, 'data') };
}

function connectionString(endpoint: string, key = AZURITE_KEY): string {
  return `DefaultEndpointsProtocol=http;AccountName=${AZURITE_ACCOUNT};AccountKey=${key};BlobEndpoint=${endpoint};`;
}

/** A well-formed account key that is not the account's. */
function wrongKey(): string {
  return crypto.randomBytes(64).toString('base64');
}

/** Runs `blobdisk mount <mnt> ...args` and checks everything a refused mount must satisfy. */
async function refused(
  p: Place,
  args: readonly string[],
  options: { secrets?: readonly string[]; env?: NodeJS.ProcessEnv; mnt?: string; message?: RegExp } = {},
): Promise<RunResult> {
  const mnt = options.mnt ?? p.mnt;
  const started = Date.now();
  const r = await runCli(['mount', mnt, '--data-dir', p.data, ...args], {
    env: options.env ?? cliEnv({}, p.data),
    timeoutMs: 90_000,
  });
  expect(r.timedOut).toBe(false);
  expect(r.code).not.toBe(0);
  expect(r.code).not.toBeNull();
  expect(lines(r.stderr)).toHaveLength(1);
  expect(r.stderr).toMatch(/^blobdisk: \S/);
  if (options.message) expect(r.stderr).toMatch(options.message);
  for (const secret of options.secrets ?? []) {
    expect(r.stderr).not.toContain(secret);
    expect(r.stdout).not.toContain(secret);
    // Not even a recognisable piece of it.
    if (secret.length >= 24) {
      expect(r.stderr).not.toContain(secret.slice(0, 16));
      expect(r.stderr).not.toContain(secret.slice(-16));
    }
  }
  // Nothing left behind: no mount, no process, no control socket, no cache lock.
  expect(await isMounted(mnt)).toBe(false);
  expect(await processesMentioning(p.base)).toEqual([]);
  await expect(fsp.stat(controlSocketPath(mnt))).rejects.toMatchObject({ code: 'ENOENT' });
  await expect(fsp.stat(path.join(p.cache, 'blobdisk.lock'))).rejects.toMatchObject({ code: 'ENOENT' });
  expect(Date.now() - started).toBeLessThan(90_000);
  return r;
}

describe('Azure refuses or cannot be reached', () => {
  test('unreachable endpoint (connection string to a closed port) fails within bounded retries', async () => {
    const p = await place();
    const port = await closedPort();
    const cs = connectionString(`http://127.0.0.1:${port}/${AZURITE_ACCOUNT}`);
    await refused(p, ['--connection-string', cs, '--container', 'disks', '--cache-dir', p.cache], {
      secrets: [AZURITE_KEY],
      message: new RegExp(`127\\.0\\.0\\.1:${port}|reach|connect`, 'i'),
    });
  });

  test('wrong account key in a connection string (403)', async () => {
    const p = await place();
    const key = wrongKey();
    await refused(p, ['--connection-string', connectionString(azurite.endpoint, key), '--container', 'disks', '--cache-dir', p.cache], {
      secrets: [key],
      message: /403|credential|key|refused|denied|authori[sz]/i,
    });
  });

  test('wrong --account-key (403), also in account mode without --container', async () => {
    const p = await place();
    const key = wrongKey();
    await refused(p, ['--account', AZURITE_ACCOUNT, '--account-key', key, '--endpoint', azurite.endpoint, '--cache-dir', p.cache], {
      secrets: [key],
      message: /403|credential|key|refused|denied|authori[sz]/i,
    });
  });

  test('a SAS with a bad signature is refused and its sig never shown', async () => {
    const p = await place();
    const sig = encodeURIComponent(crypto.randomBytes(32).toString('base64'));
    const sas = `sv=2021-08-06&ss=b&srt=sco&sp=rl&se=2099-01-01T00:00:00Z&st=2020-01-01T00:00:00Z&spr=https,http&sig=${sig}`;
    await refused(p, ['--account', AZURITE_ACCOUNT, '--sas', sas, '--endpoint', azurite.endpoint, '--container', 'disks', '--cache-dir', p.cache], {
      secrets: [sig, decodeURIComponent(sig)],
    });
  });

  test('unknown --container', async () => {
    const p = await place();
    await refused(p, ['--connection-string', azurite.connectionString, '--container', 'nosuchcontainer', '--cache-dir', p.cache], {
      secrets: [AZURITE_KEY],
      message: /nosuchcontainer/,
    });
  });

  test('--container that is not a valid container name', async () => {
    const p = await place();
    await refused(p, ['--connection-string', azurite.connectionString, '--container', 'Not_A_Name', '--cache-dir', p.cache], {
      secrets: [AZURITE_KEY],
      message: /Not_A_Name/,
    });
  });
});

describe('malformed connection strings', () => {
  test('not Name=Value pairs at all', async () => {
    const p = await place();
    await refused(p, ['--connection-string', 'this is not a connection string', '--cache-dir', p.cache], { message: /connection string/i });
  });

  test('an AccountKey that is not base64: the value is never echoed', async () => {
    const p = await place();
    const key = 'Secret!Key%Value~NotBase64';
    const cs = `AccountName=${AZURITE_ACCOUNT};AccountKey=${key};BlobEndpoint=${azurite.endpoint}`;
    await refused(p, ['--connection-string', cs, '--cache-dir', p.cache], { secrets: [key, 'Secret!Key'] });
  });

  test('a BlobEndpoint that is not a URL: the valid key in it is never echoed', async () => {
    const p = await place();
    const cs = `DefaultEndpointsProtocol=http;AccountName=${AZURITE_ACCOUNT};AccountKey=${AZURITE_KEY};BlobEndpoint=not a url`;
    await refused(p, ['--connection-string', cs, '--cache-dir', p.cache], { secrets: [AZURITE_KEY] });
  });

  test('a malformed AZURE_STORAGE_CONNECTION_STRING in the environment', async () => {
    const p = await place();
    const key = wrongKey();
    const env = cliEnv({ AZURE_STORAGE_CONNECTION_STRING: `AccountName=${AZURITE_ACCOUNT};AccountKey=${key};BlobEndpoint=ftp://nowhere` }, p.data);
    await refused(p, ['--cache-dir', p.cache], { env, secrets: [key] });
  });
});

describe('mountpoint', () => {
  test('missing', async () => {
    const p = await place();
    const mnt = path.join(p.base, 'no-such-dir');
    await refused(p, ['--connection-string', azurite.connectionString, '--container', 'disks', '--cache-dir', p.cache], {
      mnt,
      secrets: [AZURITE_KEY],
      message: /no-such-dir/,
    });
    await expect(fsp.stat(mnt)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  test('not a directory', async () => {
    const p = await place();
    const mnt = path.join(p.base, 'a-file');
    await fsp.writeFile(mnt, 'I am a file\n');
    await refused(p, ['--connection-string', azurite.connectionString, '--container', 'disks', '--cache-dir', p.cache], {
      mnt,
      secrets: [AZURITE_KEY],
      message: /a-file/,
    });
    expect(await fsp.readFile(mnt, 'utf8')).toBe('I am a file\n');
  });

  test('already mounted: the second mount is refused and the first keeps serving', async () => {
    const p = await place();
    const first = await startMount(['--connection-string', azurite.connectionString, '--container', 'disks', '--cache-dir', path.join(p.base, 'cache1')], {
      mnt: p.mnt,
    });
    try {
      const r = await runCli(['mount', p.mnt, '--connection-string', azurite.connectionString, '--container', 'disks', '--cache-dir', p.cache, '--data-dir', p.data], {
        env: cliEnv({}, p.data),
        timeoutMs: 90_000,
      });
      expect(r.timedOut).toBe(false);
      expect(r.code).not.toBe(0);
      expect(lines(r.stderr)).toHaveLength(1);
      expect(r.stderr).toMatch(/^blobdisk: .*already mounted/);
      expect(r.stderr).not.toContain(AZURITE_KEY);
      // The first mount is untouched.
      expect(first.child.exitCode).toBeNull();
      expect(await isMounted(p.mnt)).toBe(true);
      const ls = await sh('ls', ['-la', p.mnt]);
      expect(ls.code).toBe(0);
      expect((await first.status()).pid).toBe(first.child.pid);
      await expect(fsp.stat(path.join(p.cache, 'blobdisk.lock'))).rejects.toMatchObject({ code: 'ENOENT' });
    } finally {
      expect((await first.stop()).code).toBe(0);
    }
  });

  test('a cache directory in use by another mount is refused', async () => {
    const p = await place();
    const shared = path.join(p.base, 'shared-cache');
    const first = await startMount(['--connection-string', azurite.connectionString, '--container', 'disks', '--cache-dir', shared]);
    try {
      const r = await runCli(['mount', p.mnt, '--connection-string', azurite.connectionString, '--container', 'disks', '--cache-dir', shared, '--data-dir', p.data], {
        env: cliEnv({}, p.data),
        timeoutMs: 90_000,
      });
      expect(r.code).not.toBe(0);
      expect(lines(r.stderr)).toHaveLength(1);
      expect(r.stderr).toMatch(/^blobdisk: /);
      expect(await isMounted(p.mnt)).toBe(false);
      expect(await isMounted(first.mnt)).toBe(true);
      expect(first.child.exitCode).toBeNull();
      // The first mount's lock is still there.
      expect((await fsp.stat(path.join(shared, 'blobdisk.lock'))).isFile()).toBe(true);
    } finally {
      expect((await first.stop()).code).toBe(0);
    }
  });
});

describe('cache and grain options', () => {
  test('cache directory not writable (a path under a regular file)', async () => {
    const p = await place();
    const file = path.join(p.base, 'regular-file');
    await fsp.writeFile(file, 'x');
    await refused(p, ['--connection-string', azurite.connectionString, '--container', 'disks', '--cache-dir', path.join(file, 'cache')], {
      secrets: [AZURITE_KEY],
      message: /regular-file/,
    });
  });

  test('--cache-size smaller than 4 grains', async () => {
    const p = await place();
    await refused(p, ['--connection-string', azurite.connectionString, '--container', 'disks', '--cache-dir', p.cache, '--grain-size', '1M', '--cache-size', '3M'], {
      secrets: [AZURITE_KEY],
      message: /cache-size/,
    });
    await expect(fsp.stat(p.cache)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  test('--cache-size that is not a size', async () => {
    const p = await place();
    await refused(p, ['--connection-string', azurite.connectionString, '--container', 'disks', '--cache-dir', p.cache, '--cache-size', 'lots'], {
      message: /cache-size/,
    });
  });

  test.each(['3M', '100K', '1000'])('--grain-size %s is not a power of two', async (grain) => {
    const p = await place();
    await refused(p, ['--connection-string', azurite.connectionString, '--container', 'disks', '--cache-dir', p.cache, '--grain-size', grain], {
      secrets: [AZURITE_KEY],
      message: /grain-size/,
    });
  });
});
