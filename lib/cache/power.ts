/* Power loss: what fsync records and what the next open trusts (the rules are in the
 * table at the top of cache.ts).
 *
 * fsync (syncGrains): the dirty bitmaps of the grains written since the last fsync are
 * taken (at once: writes land on the event loop too), their files fdatasynced, the
 * directories that gained entries fsynced, and then the rows and those bitmaps (SyncedRow)
 * committed FULL, in that order. A grain written while this ran stays unsynced for the next
 * fsync; a failure leaves them all unsynced.
 *
 * Open (recover): when the machine booted since the last writer ran, the page cache may
 * have been lost, and with it any write not fsynced: grain bytes, change-log records, SQLite
 * pages; rows may also have reached the disk ahead of the bytes they describe (the kernel
 * writes dirty pages back in any order, and a WAL checkpoint may run at any time). So the
 * rows of dirty grains are not trusted, only their SyncedRows: a sector an fsync recorded
 * dirty holds what that fsync acknowledged, or what a later write put there; nothing else of
 * a dirty grain is known to match Azure or the application. That holds because a grain
 * file an fsync recorded is never cut or removed before the removal of its record is
 * durable (GrainCache.drop and truncate make the map durable first). */

import { BlobdiskError } from '../errors';
import { Disk } from '../grainmap/disk';
import { GrainMap, GrainRow, SyncedRow } from '../grainmap/grainmap';
import { Logger } from '../log';
import { GrainFiles } from './files';
import { Entry, GrainIndex, keyOf } from './grain-index';

/** A local disk failure as a typed error: a full disk (or quota) is no-space, anything else failed. */
export function diskError(what: string, e: unknown): BlobdiskError {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  const full = code === 'ENOSPC' || code === 'EDQUOT';
  const hint = full ? ': the disk of --cache-dir is full; free space there or give a --cache-dir on a larger disk' : '';
  return new BlobdiskError(full ? 'no-space' : 'failed', `${what} in the cache directory failed: ${code ?? String(e)}${hint}`);
}

/** Makes `pending` (grains written since the last fsync) durable on local disk, then has
 *  `commit` make the rows durable with the records of the dirty ones (see the file's
 *  header). Throws when a file cannot be synced or `commit` throws: the grains stay unsynced. */
export async function syncGrains(index: GrainIndex, files: GrainFiles, pending: Entry[], commit: (records: SyncedRow[]) => void): Promise<void> {
  const gens = new Map<Entry, number>();
  const records = new Map<Entry, SyncedRow>();
  for (const e of pending) {
    gens.set(e, e.gen);
    if (e.dirty) records.set(e, { imageId: e.imageId, idx: e.idx, dirty: Buffer.from(e.dirty) });
  }
  const live = (e: Entry): boolean => index.get(keyOf(e.imageId, e.idx)) === e;
  try {
    // A clean grain needs no sync: its checksum catches a file the power loss tore.
    await Promise.all([...records.keys()].filter(live).map((e) => files.withFile(e.imageId, e.idx, (handle) => handle.datasync())));
    await files.syncDirs();
  } catch (err) {
    throw diskError('fdatasync', err);
  }
  const kept = [...records].filter(([e]) => live(e));
  commit(kept.map(([, r]) => r));
  // Only now, and only for grains not written meanwhile: a failed fdatasync or commit
  // leaves them unsynced, so the next fsync syncs them again.
  for (const e of pending) if (e.gen === gens.get(e)) e.unsynced = false;
  for (const [e] of kept) e.recorded = true;
}

/** What recover() did. */
export interface Recovered {
  /** Dirty grains cut back to the sectors their last fsync acknowledged. */
  kept: number;
  /** Dirty grains no fsync covered, dropped (Azure's bytes are read again). */
  dropped: number;
}

/** At open: after a reboot, brings the dirty grains of the grain map back to what the last
 *  fsyncs acknowledged (see the file's header); then records this boot. Returns the keys of
 *  the grains that carry a record. */
export function recover(map: GrainMap, disk: Disk, fileOf: (row: GrainRow) => string, log: Logger): Set<string> {
  const last = map.boot();
  const now = disk.bootId();
  const records = new Map(map.syncedGrains().map((r) => [keyOf(r.imageId, r.idx), r]));
  // A cache of an older version recorded no boot: its writer ran in this one.
  if (last !== undefined && last !== now) {
    const done: Recovered = { kept: 0, dropped: 0 };
    const gone: GrainRow[] = [];
    for (const row of map.allGrains()) {
      if (!row.dirty) continue; // clean: its checksum is checked before it is served
      const record = records.get(keyOf(row.imageId, row.idx));
      if (!record || !disk.exists(fileOf(row))) {
        if (record) log.error(`the cache file of grain ${row.idx} of image ${row.imageId} is gone although fsync recorded it: data written to it is lost`);
        records.delete(keyOf(row.imageId, row.idx));
        gone.push(row);
        disk.rmSync(fileOf(row));
        continue;
      }
      done.kept++;
      map.putGrain({ ...row, valid: record.dirty, dirty: record.dirty, checksum: null });
    }
    done.dropped = gone.length;
    map.deleteGrains(gone);
    if (done.kept + done.dropped > 0) {
      log.warn(
        `the machine restarted since this cache was last used, so writes not fsynced may be lost: ${done.kept} grains ` +
          `with data not yet uploaded kept as far as fsync acknowledged them, ${done.dropped} dropped (written but never fsynced); ` +
          `Azure's data is read again for the rest`,
      );
    }
  }
  map.boot(now); // durably, with what was done above
  return new Set(records.keys());
}
/** Removes what a crash may have left in the grain directories: fetched grains not yet
 *  renamed into place (*.partial) and files no grain row names. */
export function sweep(disk: Disk, grainsDir: string, rows: readonly GrainRow[]): number {
  const known = new Set(rows.map((r) => keyOf(r.imageId, r.idx)));
  let removed = 0;
  for (const image of disk.readdirSync(grainsDir)) {
    if (!/^\d+$/.test(image)) continue;
    let names: string[];
    try {
      names = disk.readdirSync(`${grainsDir}/${image}`);
    } catch {
      continue;
    }
    for (const name of names) {
      if (/^\d+$/.test(name) && known.has(`${image}:${name}`)) continue;
      if (!/^\d+(\.partial)?$/.test(name)) continue;
      disk.rmSync(`${grainsDir}/${image}/${name}`);
      removed++;
    }
  }
  return removed;
}
