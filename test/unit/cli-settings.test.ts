import { fstabToArgv } from '../../lib/cli/fstab';
import { MOUNT_FLAGS, camel, envName } from '../../lib/cli/flags';
import { printConfig } from '../../lib/cli/print-config';
import { mergeSettings, parseConfigFile, settingsFromEnv } from '../../lib/cli/settings';
import { parseMountOptions } from '../../lib/cli/options';

describe('mount settings from flags, environment and a config file', () => {
  const file = parseConfigFile(
    ['cache-size: 20G', 'file-mode: 0640', 'allow-other: yes', 'page-blob-pattern: ["*.img", "*.bin"]', 'write-back-delay: 2', 'container: vms'].join('\n'),
    '/etc/blobdisk.yaml',
  );

  it('keeps every value of the file as the flag would take it (0640 stays octal text)', () => {
    expect(file).toEqual({ cacheSize: '20G', fileMode: '0640', allowOther: true, pageBlobPattern: ['*.img', '*.bin'], writeBackDelay: 2, container: 'vms' });
  });

  it('gives flags precedence over the environment, and the environment over the file', () => {
    const env = { BLOBDISK_CACHE_SIZE: '30G', BLOBDISK_CONTAINER: 'envc', BLOBDISK_HOME: '/ignored/here' };
    const merged = mergeSettings({ mountpoint: '/m', container: 'flagc' }, env, file);
    expect(merged).toMatchObject({ mountpoint: '/m', container: 'flagc', cacheSize: '30G', fileMode: '0640', allowOther: true, writeBackDelay: 2 });
    const o = parseMountOptions(merged, { HOME: '/home/u' });
    expect([o.container, o.cache.sizeBytes, o.access.fileMode, o.write.writeBackDelayMs]).toEqual(['flagc', 30 * 2 ** 30, 0o640, 2000]);
  });

  it('has an environment variable for every flag', () => {
    for (const flag of MOUNT_FLAGS) {
      const raw = flag.type === 'boolean' ? 'true' : flag.type === 'number' ? '7' : 'x y';
      const got = settingsFromEnv({ [envName(flag.name)]: raw })[camel(flag.name)];
      expect({ flag: flag.name, got }).toEqual({ flag: flag.name, got: flag.type === 'boolean' ? true : flag.type === 'number' ? 7 : flag.type === 'array' ? ['x', 'y'] : 'x y' });
    }
    expect(envName('cache-size')).toBe('BLOBDISK_CACHE_SIZE');
  });

  it.each([
    ['colour: blue', /unknown setting "colour"; the settings are the names of blobdisk mount's flags/],
    ['read-only: maybe', /read-only in \/etc\/b.yaml must be true or false, not "maybe"/],
    ['drain-timeout: soon', /drain-timeout in \/etc\/b.yaml must be a number/],
    ['cache-size: [1, 2]', /cache-size in \/etc\/b.yaml must be a single value/],
    ['- just\n- a list', /must hold "name: value" lines/],
    ['a: [unclosed', /\/etc\/b.yaml line 1 is not valid YAML/],
  ])('refuses %p in a config file with one line', (text, message) => {
    expect(() => parseConfigFile(text, '/etc/b.yaml')).toThrow(message);
  });

  it('refuses a malformed environment value, naming the variable', () => {
    expect(() => settingsFromEnv({ BLOBDISK_READ_ONLY: 'perhaps' })).toThrow(/BLOBDISK_READ_ONLY must be true or false/);
  });
});

describe('--print-config', () => {
  it('prints what the mount would use, as a file --config reads back, with secrets masked', () => {
    const key = 'S3cretKeyS3cretKey==';
    const o = parseMountOptions({ mountpoint: '/m', account: 'acct1', accountKey: key, fileMode: '0640', cacheSize: '20G' }, { HOME: '/home/u' });
    const text = printConfig(o, { daemon: false, logFile: undefined, pidFile: '/run/b.pid' });
    expect(text).not.toContain(key);
    expect(text).toContain('account-key: "***"');
    const back = parseConfigFile(text, 'printed');
    expect(back).toMatchObject({ account: 'acct1', cacheSize: '20G', fileMode: '0640', pidFile: '/run/b.pid', daemon: false });
    expect(parseMountOptions({ mountpoint: '/m', ...back, accountKey: 'k' }, {}).access.fileMode).toBe(0o640);
  });
});

describe('mount.fuse.blobdisk', () => {
  it('turns an fstab line into blobdisk mount --daemon with the same flags', () => {
    expect(fstabToArgv(['vms', '/mnt/blobs', '-o', 'rw,allow_other,uid=libvirt-qemu,cache_dir=/var/cache/b,_netdev,noauto,x-systemd.automount,page_blob_pattern=*.img:*.raw'])).toEqual([
      'mount', '/mnt/blobs', '--daemon', '--container', 'vms', '--allow-other', '--uid', 'libvirt-qemu', '--cache-dir', '/var/cache/b', '--page-blob-pattern', '*.img', '*.raw',
    ]);
    expect(fstabToArgv(['blobdisk', '/mnt/b', '-n', '-oro,config=/etc/blobdisk.yaml'])).toEqual(['mount', '/mnt/b', '--daemon', '--read-only', '--config', '/etc/blobdisk.yaml']);
  });
  it.each([
    [['vms'], /usage: mount.fuse.blobdisk CONTAINER\|blobdisk MOUNTPOINT/],
    [['vms', '/m', '-o', 'colour=blue'], /unknown option "colour" in the mount options/],
    [['vms', '/m', '-o', 'cache_dir'], /the mount option cache-dir needs a value/],
  ])('refuses %p with one line', (args, message) => {
    expect(() => fstabToArgv(args)).toThrow(message);
  });
});
