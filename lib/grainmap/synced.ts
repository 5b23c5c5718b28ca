/* The grain map's record of fsyncs (the table synced, see schema.ts and lib/cache/power.ts)
 * and the report of a change log that cannot be folded into SQLite. */

import Database from 'better-sqlite3';
import { errorMessage } from '../errors';
import { Logger } from '../log';
import { SyncedRow } from './rows';

/** Records `rows` (of grains the map still holds), in the caller's transaction. */
export function putSynced(db: Database.Database, rows: readonly SyncedRow[]): void {
  if (rows.length === 0) return;
  const put = db.prepare('INSERT OR REPLACE INTO synced (image_id, idx, dirty) SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM grains WHERE image_id = ? AND idx = ?)');
  for (const r of rows) put.run(r.imageId, r.idx, r.dirty, r.imageId, r.idx);
}

/** The records of grains that are dirty now; those of grains clean since are forgotten. */
export function readSynced(db: Database.Database): SyncedRow[] {
  db.prepare('DELETE FROM synced WHERE NOT EXISTS (SELECT 1 FROM grains g WHERE g.image_id = synced.image_id AND g.idx = synced.idx AND g.dirty IS NOT NULL)').run();
  const rows = db.prepare('SELECT * FROM synced').all() as { image_id: number; idx: number; dirty: Buffer }[];
  return rows.map((r) => ({ imageId: r.image_id, idx: r.idx, dirty: r.dirty }));
}

/** Reports a run of failed folds once, with what it means, and its end once. */
export class FoldReport {
  private failing = false;

  constructor(
    private readonly log: Logger,
    private readonly file: string,
    private readonly everyMs: number,
  ) {}

  failed(e: unknown): void {
    if (this.failing) return;
    this.failing = true;
    this.log.error(
      `the grain map cannot write its change log into ${this.file} (${errorMessage(e)}): the changes stay committed in ` +
        `${this.file}.log, which grows until this works again, and fsync fails meanwhile; retrying every ${this.everyMs} ms`,
    );
  }

  worked(): void {
    if (!this.failing) return;
    this.failing = false;
    this.log.info(`the grain map writes its change log into ${this.file} again`);
  }
}
