/* One mount per cache directory: two processes sharing a grain map and grain files would
 * corrupt both. The lock is a file holding the owner's pid and mountpoint, taken with
 * O_EXCL; a lock whose process is gone (crash, kill -9) is taken over. */

import fs from 'node:fs';
import path from 'node:path';
import { UsageError } from '../errors';
import { isAlive } from '../pid';


export class CacheLock {
  private constructor(private readonly file: string) {}

  static acquire(dir: string, mountpoint: string): CacheLock {
    const file = path.join(dir, 'blobdisk.lock');
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        fs.writeFileSync(file, JSON.stringify({ pid: process.pid, mountpoint }), { flag: 'wx' });
        return new CacheLock(file);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
      let owner: { pid?: number; mountpoint?: string } = {};
      try {
        owner = JSON.parse(fs.readFileSync(file, 'utf8')) as typeof owner;
      } catch {
        // A torn lock file: its writer died while writing it.
      }
      if (typeof owner.pid === 'number' && owner.pid !== process.pid && isAlive(owner.pid)) {
        throw new UsageError(
          `cache directory ${dir} is in use by blobdisk (pid ${owner.pid}, mounted at ${owner.mountpoint ?? '?'}); give another --cache-dir or unmount that one`,
        );
      }
      fs.rmSync(file, { force: true });
    }
    throw new UsageError(`could not lock cache directory ${dir}; is another blobdisk starting there?`);
  }

  release(): void {
    fs.rmSync(this.file, { force: true });
  }
}
