/* The command lines of snapshot, clone, diff and rm: paths in the mount, and bad input
 * refused with one line before any request is sent. */

import { PassThrough } from 'node:stream';
import { main } from '../../lib/cli/main';
import { mountPath } from '../../lib/cli/snapshot';

async function run(argv: string[]): Promise<{ code: number; stderr: string }> {
  const stderr = new PassThrough();
  let text = '';
  stderr.on('data', (d: Buffer) => (text += d.toString()));
  const code = await main(argv, { stdout: new PassThrough(), stderr, env: {} });
  return { code, stderr: text };
}

describe('backup command lines', () => {
  it('image paths are the mount\'s: relative to the mountpoint, or absolute inside it', () => {
    expect(mountPath('/mnt/b', 'vms/disk.img')).toBe('/vms/disk.img');
    expect(mountPath('/mnt/b', '/mnt/b/vms/disk.img')).toBe('/vms/disk.img');
    expect(mountPath('/mnt/b', 'vms/.snapshots/disk.img/x/')).toBe('/vms/.snapshots/disk.img/x');
    expect(() => mountPath('/mnt/b', '/etc/passwd')).toThrow('/etc/passwd is not inside /mnt/b; give the image as a path in the mount, e.g. vms/disk.img');
    expect(() => mountPath('/mnt/b', '../x')).toThrow(/is not inside/);
    expect(() => mountPath('/mnt/b', '/mnt/b')).toThrow(/is not inside/);
  });

  it('bad input gets one line and a non-zero exit', async () => {
    const noName = await run(['snapshot', '--delete', '/nonexistent-mnt', 'vms/disk.img']);
    expect(noName).toEqual({ code: 2, stderr: expect.stringMatching(/^blobdisk: snapshot --delete needs the snapshot: .*\n$/) });
    const outside = await run(['clone', '/nonexistent-mnt', '/etc/passwd', 'x.img']);
    expect(outside.code).toBe(1);
    expect(outside.stderr).toBe('blobdisk: /etc/passwd is not inside /nonexistent-mnt; give the snapshot or image as a path in the mount, e.g. vms/disk.img\n');
    const noMount = await run(['diff', '/nonexistent-mnt', 'vms/disk.img', '--since', 'x']);
    expect(noMount).toEqual({ code: 1, stderr: 'blobdisk: no blobdisk mount answers at /nonexistent-mnt; is it mounted?\n' });
    const badCompare = await run(['diff', '/nonexistent-mnt', 'vms/disk.img', '--since', 'x', '--compare', 'magic']);
    expect(badCompare.code).toBe(2);
    const noSince = await run(['diff', '/nonexistent-mnt', 'vms/disk.img']);
    expect({ code: noSince.code, says: /since/.test(noSince.stderr) }).toEqual({ code: 2, says: true });
    const badTimeout = await run(['snapshot', '/nonexistent-mnt', 'vms/disk.img', '--timeout', '0']);
    expect(badTimeout).toEqual({ code: 1, stderr: 'blobdisk: --timeout takes seconds, e.g. 60\n' });
  });
});
