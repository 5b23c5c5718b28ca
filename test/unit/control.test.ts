import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { canonicalMountpoint, checkControlDir, controlDir, controlSocketPath } from '../../lib/control';

describe('the control directory', () => {
  let base: string;
  beforeEach(() => {
    base = fs.mkdtempSync(path.join(os.tmpdir(), 'blobdisk-control-'));
  });
  afterEach(() => fs.rmSync(base, { recursive: true, force: true }));

  it('is found at the same path whatever the environment', () => {
    expect(controlDir(0)).toBe('/run/blobdisk');
    expect(controlDir(1000)).toBe('/tmp/blobdisk-1000');
    expect(controlSocketPath('/mnt/blobs', '/run/blobdisk')).toMatch(/^\/run\/blobdisk\/[0-9a-f]{24}\.sock$/);
    expect(controlSocketPath('/mnt/blobs/', '/d')).toBe(controlSocketPath('/mnt/blobs', '/d'));
  });

  it('is the same for a mountpoint named through a symlinked parent and by its real path', () => {
    fs.mkdirSync(path.join(base, 'real'));
    fs.symlinkSync(path.join(base, 'real'), path.join(base, 'link'));
    expect(controlSocketPath(path.join(base, 'link', 'mnt'), '/d')).toBe(controlSocketPath(path.join(base, 'real', 'mnt'), '/d'));
    expect(canonicalMountpoint(path.join(base, 'link', 'mnt'))).toBe(path.join(fs.realpathSync(base), 'real', 'mnt'));
  });

  it('is trusted only when it is a directory of ours that nobody else can use', () => {
    const uid = process.getuid?.() ?? 0;
    const ours = path.join(base, 'ours');
    fs.mkdirSync(ours, { mode: 0o700 });
    expect(() => checkControlDir(ours, uid)).not.toThrow();
    expect(() => checkControlDir(path.join(base, 'not-yet'), uid)).not.toThrow();

    fs.chmodSync(ours, 0o777);
    expect(() => checkControlDir(ours, uid)).toThrow(`the control directory ${ours} is open to other users (mode 0777); someone else may have made it: remove it (rm -r ${ours}) and try again`);
    fs.chmodSync(ours, 0o700);
    expect(() => checkControlDir(ours, uid + 1)).toThrow(`belongs to uid ${uid}, not to you (uid ${uid + 1})`);

    const link = path.join(base, 'link');
    fs.symlinkSync(ours, link);
    expect(() => checkControlDir(link, uid)).toThrow(/link is not a directory/);
  });
});
