import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DEFAULTS } from '../../lib/config';
import { parseMountOptions } from '../../lib/cli/options';
import { formatSize, isPowerOfTwo, parseSize } from '../../lib/units';

describe('defaults', () => {
  it('are pinned: changing one is a decision, not an accident', () => {
    expect(DEFAULTS).toEqual({
      grainSize: 1024 * 1024,
      cacheSize: 10 * 1024 ** 3,
      readAheadGrains: 16,
      fetchConcurrency: 8,
      maxFetchBytes: 8 * 1024 * 1024,
      maxTries: 4,
      tryTimeoutMs: 30_000,
      ioTimeoutMs: 30_000,
      attrTtlMs: 5_000,
      logLevel: 'info',
      minCacheGrains: 4,
      minGrainSize: 64 * 1024,
      maxGrainSize: 64 * 1024 * 1024,
      sync: 'local',
      drainTimeoutMs: 60_000,
      dirtyWaitMs: 30_000,
      writeBackDelayMs: 500,
      uploadConcurrency: 8,
      checkpoints: 0,
      checkpointIntervalMs: 5 * 60_000,
      pageBlobPatterns: ['*.img', '*.raw', '*.vhd', '*.vmdk', '*.qcow2', '*.vdi'],
    });
    expect(Object.isFrozen(DEFAULTS)).toBe(true);
  });
});

describe('checkpoints', () => {
  it('takes the interval as a duration: 30s, 5m, 1h, plain seconds, or 0 for every fsync', () => {
    const env = { AZURE_STORAGE_CONNECTION_STRING: 'UseDevelopmentStorage=true' };
    const w = (args: Record<string, unknown>) => parseMountOptions({ mountpoint: 'm', ...args }, env).write;
    expect(w({})).toMatchObject({ checkpoints: 0, checkpointIntervalMs: 300_000 });
    expect(w({ checkpoints: 24, checkpointInterval: '1h' })).toMatchObject({ checkpoints: 24, checkpointIntervalMs: 3_600_000 });
    expect(w({ checkpointInterval: '30s' }).checkpointIntervalMs).toBe(30_000);
    expect(w({ checkpointInterval: '1.5m' }).checkpointIntervalMs).toBe(90_000);
    expect(w({ checkpointInterval: '90' }).checkpointIntervalMs).toBe(90_000);
    expect(w({ checkpointInterval: '0' }).checkpointIntervalMs).toBe(0);
  });
});

describe('sizes', () => {
  it('parses binary suffixes', () => {
    expect(parseSize('10G')).toBe(10 * 2 ** 30);
    expect(parseSize('1M')).toBe(2 ** 20);
    expect(parseSize('512k')).toBe(512 * 1024);
    expect(parseSize('4096')).toBe(4096);
    expect(parseSize('1.5GiB')).toBe(1.5 * 2 ** 30);
    expect(parseSize('ten')).toBeUndefined();
    expect(parseSize('-1M')).toBeUndefined();
  });
  it('formats', () => {
    expect(formatSize(1024 * 1024)).toBe('1 MiB');
    expect(formatSize(1536)).toBe('1.5 KiB');
  });
  it('knows powers of two beyond 32 bits', () => {
    expect(isPowerOfTwo(2 ** 33)).toBe(true);
    expect(isPowerOfTwo(3 * 2 ** 20)).toBe(false);
    expect(isPowerOfTwo(0)).toBe(false);
  });
});

describe('parseMountOptions', () => {
  const env = { HOME: '/home/u' };
  it('fills defaults and freezes the result', () => {
    const o = parseMountOptions({ mountpoint: 'mnt' }, env);
    expect(o.credentials).toBeUndefined();
    expect(o.dataDir).toBe('/home/u/.local/share/blobdisk');
    expect(o.cache).toEqual({ dir: '/home/u/.local/share/blobdisk/cache', sizeBytes: DEFAULTS.cacheSize, grainSize: DEFAULTS.grainSize });
    expect(o.read.readAheadGrains).toBe(16);
    expect(o.attrTtlMs).toBe(DEFAULTS.attrTtlMs);
    expect(parseMountOptions({ mountpoint: 'mnt', dirCacheTime: 60 }, env).attrTtlMs).toBe(60_000);
    expect(Object.isFrozen(o)).toBe(true);
    expect(Object.isFrozen(o.cache)).toBe(true);
  });
  it('takes credentials from flags or the environment', () => {
    expect(parseMountOptions({ mountpoint: 'm' }, { AZURE_STORAGE_CONNECTION_STRING: 'AccountName=a;AccountKey=k' }).credentials).toEqual({
      kind: 'connectionString',
      connectionString: 'AccountName=a;AccountKey=k',
    });
    expect(parseMountOptions({ mountpoint: 'm', account: 'acct1', sas: '?sv=1&sig=x' }, env).credentials).toEqual({
      kind: 'sas',
      account: 'acct1',
      sas: 'sv=1&sig=x',
      endpoint: 'https://acct1.blob.core.windows.net',
    });
  });
  it.each([
    [{ grainSize: '3M' }, /--grain-size 3M must be a power of two/],
    [{ grainSize: '1K' }, /must be a power of two from 64 KiB to 64 MiB/],
    [{ cacheSize: '2M' }, /--cache-size 2M is smaller than 4 grains \(4 MiB\)/],
    [{ cacheSize: 'lots' }, /--cache-size "lots" is not a size/],
    [{ container: 'Bad_Name' }, /is not a container name/],
    [{ account: 'acct1' }, /--account needs exactly one of --account-key, --account-key-file or --sas/],
    [{ accountKey: 'k' }, /--account-key, --account-key-file and --sas need --account NAME/],
    [{ account: 'acct1', accountKey: 'k', accountKeyFile: '/k' }, /either --account-key or --account-key-file, not both/],
    [{ auth: 'password' }, /--auth must be one of connection-string, key, sas, entra/],
    [{ auth: 'entra' }, /--auth entra needs the storage account: --account NAME/],
    [{ auth: 'entra', account: 'acct1', sas: 'sp=r' }, /--auth entra signs in with Microsoft Entra ID; leave out --account-key/],
    [{ auth: 'sas', account: 'acct1', accountKey: 'a2V5' }, /--auth sas needs --account with --sas/],
    [{ account: 'acct1', sas: 'sv=1&sp=rl&sig=x' }, /the SAS token lacks the Write permission \(sp=rl\)/],
    [{ account: 'acct1', sas: 'sv=1&ss=q&sp=rwl&sig=x' }, /the SAS token is not for the Blob service \(ss=q\)/],
    [{ account: 'acct1', accountKeyFile: '/no/such/key/file' }, /cannot read --account-key-file \/no\/such\/key\/file \(ENOENT\)/],
    [{ account: 'acct1', accountKey: 'k', connectionString: 'x' }, /not both/],
    [{ logLevel: 'loud' }, /--log-level must be one of/],
    [{ sync: 'sometimes' }, /--sync must be local .* or cloud/],
    [{ pageBlobPattern: ['vms/*.img'] }, /must be a file-name pattern/],
    [{ dirCacheTime: -1 }, /--dir-cache-time takes seconds/],
    [{ checkpoints: 2.5 }, /--checkpoints takes how many checkpoints to keep per image, e\.g\. 24/],
    [{ checkpointInterval: 'hourly' }, /--checkpoint-interval "hourly" is not a duration; give e\.g\. 30s, 5m, 1h or 0/],
  ])('rejects %p with one clear line', (args, message) => {
    expect(() => parseMountOptions({ mountpoint: 'm', ...args }, env)).toThrow(message);
  });
  it('never echoes an account key in its errors', () => {
    const key = 'S3cretKeyS3cretKey==';
    try {
      parseMountOptions({ mountpoint: 'm', accountKey: key }, env);
      throw new Error('expected a failure');
    } catch (e) {
      expect((e as Error).message).not.toContain(key);
    }
  });
  it('takes the Azure CLI variables when no flag names an account', () => {
    const env = { AZURE_STORAGE_ACCOUNT: 'acct2', AZURE_STORAGE_KEY: 'a2V5', AZURE_STORAGE_SAS_TOKEN: 'sv=1&sig=s' };
    expect(parseMountOptions({ mountpoint: 'm' }, env).credentials).toEqual({ kind: 'accountKey', account: 'acct2', accountKey: 'a2V5', endpoint: 'https://acct2.blob.core.windows.net' });
    expect(parseMountOptions({ mountpoint: 'm' }, { AZURE_STORAGE_ACCOUNT: 'acct2', AZURE_STORAGE_SAS_TOKEN: '?sv=1&sig=s' }).credentials).toEqual({
      kind: 'sas',
      account: 'acct2',
      sas: 'sv=1&sig=s',
      endpoint: 'https://acct2.blob.core.windows.net',
    });
    // A flag naming the account, or a connection string, wins over them.
    expect(parseMountOptions({ mountpoint: 'm', connectionString: 'AccountName=x;AccountKey=y' }, env).credentials?.kind).toBe('connectionString');
    expect(parseMountOptions({ mountpoint: 'm' }, { ...env, AZURE_STORAGE_CONNECTION_STRING: 'AccountName=x;AccountKey=y' }).credentials?.kind).toBe('connectionString');
    expect(() => parseMountOptions({ mountpoint: 'm' }, { AZURE_STORAGE_ACCOUNT: 'acct2' })).toThrow(/AZURE_STORAGE_ACCOUNT needs exactly one of AZURE_STORAGE_KEY, AZURE_STORAGE_SAS_TOKEN or AZURE_STORAGE_AUTH_MODE=login/);
  });
  it('signs in with Entra ID for --auth entra, or the Azure CLI\'s AZURE_STORAGE_AUTH_MODE=login', () => {
    expect(parseMountOptions({ mountpoint: 'm', auth: 'entra', account: 'acct1' }, env).credentials).toEqual({ kind: 'entra', account: 'acct1', endpoint: 'https://acct1.blob.core.windows.net' });
    expect(parseMountOptions({ mountpoint: 'm' }, { AZURE_STORAGE_ACCOUNT: 'acct3', AZURE_STORAGE_AUTH_MODE: 'login' }).credentials).toMatchObject({ kind: 'entra', account: 'acct3' });
    expect(parseMountOptions({ mountpoint: 'm', auth: 'key', account: 'acct1', accountKey: 'a2V5' }, env).credentials?.kind).toBe('accountKey');
    expect(parseMountOptions({ mountpoint: 'm', readOnly: true, account: 'acct1', sas: 'sv=1&sp=rl&sig=x' }, env).credentials?.kind).toBe('sas');
  });
  it('reads --account-key-file', () => {
    const file = path.join(os.tmpdir(), `blobdisk-key-${process.pid}`);
    fs.writeFileSync(file, 'a2V5LWZyb20tZmlsZQ==\n', { mode: 0o600 });
    try {
      expect(parseMountOptions({ mountpoint: 'm', account: 'acct1', accountKeyFile: file }, env).credentials).toMatchObject({ kind: 'accountKey', accountKey: 'a2V5LWZyb20tZmlsZQ==' });
    } finally {
      fs.rmSync(file);
    }
  });
});
