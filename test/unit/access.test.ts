import { parseAccess, parseMode } from '../../lib/cli/access';
import { DEFAULT_DIR_MODE, DEFAULT_FILE_MODE } from '../../lib/config';
import { checkAllowOther } from '../../lib/preflight';

const passwd = 'root:x:0:0:root:/root:/bin/bash\nlibvirt-qemu:x:64055:108:Libvirt Qemu,,,:/var/lib/libvirt:/usr/sbin/nologin\n';
const group = 'root:x:0:\nkvm:x:108:\n';
const files = (f: '/etc/passwd' | '/etc/group'): string => (f === '/etc/passwd' ? passwd : group);
const self = { uid: 1000, gid: 1001 };

describe('access options', () => {
  it('default to the mounting user, 0644 files and 0755 directories, no other users', () => {
    expect(parseAccess({}, self, files)).toEqual({ allowOther: false, uid: 1000, gid: 1001, fileMode: 0o644, dirMode: 0o755 });
    expect([DEFAULT_FILE_MODE, DEFAULT_DIR_MODE]).toEqual([0o644, 0o755]);
  });
  it('take user and group names or numbers, and octal modes as rclone writes them', () => {
    expect(parseAccess({ allowOther: true, uid: 'libvirt-qemu', gid: 'kvm', fileMode: '0660', dirMode: '770' }, self, files)).toEqual({
      allowOther: true,
      uid: 64055,
      gid: 108,
      fileMode: 0o660,
      dirMode: 0o770,
    });
    expect(parseAccess({ uid: '42', gid: 7 }, self, files)).toMatchObject({ uid: 42, gid: 7 });
    expect(parseMode('file-mode', '0o600')).toBe(0o600);
  });
  it.each([
    [{ uid: 'nosuchuser' }, /--uid "nosuchuser" is neither a number nor a user of this machine/],
    [{ gid: 'nosuchgroup' }, /--gid "nosuchgroup" is neither a number nor a group/],
    [{ fileMode: 'rw-r--r--' }, /--file-mode "rw-r--r--" is not a permission mode; give octal bits like 0644/],
    [{ dirMode: '0888' }, /--dir-mode "0888" is not a permission mode/],
    [{ fileMode: '04755' }, /--file-mode "04755" is not a permission mode/],
  ])('rejects %p with one clear line', (args, message) => {
    expect(() => parseAccess(args, self, files)).toThrow(message);
  });
  it('asks for user_allow_other in /etc/fuse.conf only when a user other than root mounts with --allow-other', () => {
    const other = parseAccess({ allowOther: true }, self, files);
    expect(() => checkAllowOther(other, 1000, '# mount_max = 1000\n#user_allow_other\n')).toThrow(/user_allow_other in \/etc\/fuse.conf/);
    expect(() => checkAllowOther(other, 1000, 'user_allow_other\n')).not.toThrow();
    expect(() => checkAllowOther(other, 0, '')).not.toThrow();
    expect(() => checkAllowOther(parseAccess({}, self, files), 1000, '')).not.toThrow();
  });
});
