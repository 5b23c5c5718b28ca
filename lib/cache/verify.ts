/* Checking clean grains against their CRC-32 before they are served: the first read of a
 * clean grain in this process checks it (concurrent first reads share one whole read),
 * so a file torn by a crash is dropped and fetched again, never served. Dirty grains are
 * not checked: their file is the only copy. Checksums of whole files run in a worker
 * thread (crc.ts). */

import { Logger } from '../log';
import { Crc32, FileCheckError } from './crc';
import { GrainFiles } from './files';
import { CacheStats, Entry, GrainIndex } from './grain-index';

export class Verifier {
  /** Checksum checks under way: concurrent first reads of a grain share one whole read. */
  private readonly verifying = new Map<string, Promise<Buffer | undefined>>();
  readonly crc = new Crc32();

  constructor(
    private readonly index: GrainIndex,
    private readonly files: GrainFiles,
    private readonly grainSize: number,
    private readonly log: Logger,
    /** Drops grains that failed (the cache's own drop). */
    private readonly drop: (entries: Entry[]) => Promise<void>,
  ) {}

  private get stats(): CacheStats {
    return this.index.stats;
  }

  /** Whether the first read of the grain in this process must check its checksum. */
  needsCheck(entry: Entry): boolean {
    return !entry.verified && !entry.dirty && entry.checksum !== null;
  }

  /** Whether a check of the grain is under way. */
  busy(key: string): boolean {
    return this.verifying.has(key);
  }

  /** The whole grain, checked; undefined when it failed (it is then dropped) or changed
   *  meanwhile. Concurrent callers share one read. */
  whole(key: string, entry: Entry, checksum: number): Promise<Buffer | undefined> {
    let verifying = this.verifying.get(key);
    if (!verifying) {
      verifying = this.files
        .readFull(entry.imageId, entry.idx, Buffer.allocUnsafe(this.grainSize), 0)
        .then(async (data) => ((await this.check(key, entry, checksum, data)) ? data : undefined))
        .finally(() => this.verifying.delete(key));
      this.verifying.set(key, verifying);
    }
    return verifying;
  }

  /** Checks a grain's file against its checksum in the worker thread; see check(). */
  async checkFile(key: string, entry: Entry): Promise<boolean> {
    const checksum = entry.checksum;
    if (checksum === null) return true;
    let crc: number;
    try {
      crc = await this.crc.ofFile(this.files.fileOf(entry.imageId, entry.idx), this.grainSize);
    } catch (e) {
      if (!(e instanceof FileCheckError) || e.code !== 'ENOENT') throw e;
      if (this.index.get(key) !== entry || entry.dirty) return false;
      this.stats.corruptions++;
      this.log.warn(`cached grain ${entry.idx} of image ${entry.imageId} vanished from the cache directory; fetching it again`);
      await this.drop([entry]);
      return false;
    }
    return this.judge(key, entry, checksum, crc);
  }

  /** Whether `data`, read from the file of `entry` while it carried `checksum`, passes;
   *  a grain that fails is dropped. One written or replaced meanwhile is left for the
   *  caller to read again. */
  async check(key: string, entry: Entry, checksum: number, data: Buffer): Promise<boolean> {
    if (this.index.get(key) !== entry || entry.dirty || entry.checksum !== checksum) return false;
    if (entry.verified) return true;
    return this.judge(key, entry, checksum, await this.crc.of(data));
  }

  /** Whether the grain passes, its content having had CRC `crc` while it carried
   *  `checksum` (see check()). */
  private async judge(key: string, entry: Entry, checksum: number, crc: number): Promise<boolean> {
    if (this.index.get(key) !== entry || entry.dirty || entry.checksum !== checksum) return false;
    if (entry.verified) return true;
    if (crc !== checksum) {
      this.stats.corruptions++;
      this.log.warn(`cached grain ${entry.idx} of image ${entry.imageId} failed its checksum; fetching it again`);
      await this.drop([entry]);
      return false;
    }
    entry.verified = true;
    return true;
  }
}
