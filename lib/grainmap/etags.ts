/* The ETags our own uploads produced lately (the table etags, see schema.ts): at least the
 * last 64 per image are kept; older ones are pruned every 64 uploads, not at each, as a
 * flush of small random writes records thousands. */

import Database from 'better-sqlite3';
import { Clock } from '../clock';

const KEPT_ETAGS = 64;

export class OwnEtags {
  /** ETags recorded per image since the last pruning. */
  private readonly recorded = new Map<number, number>();
  private at = 0;

  constructor(
    /** The grain map's prepared statements. */
    private readonly sql: (text: string) => Database.Statement,
    private readonly clock: Clock,
  ) {}

  record(imageId: number, etag: string): void {
    // Strictly increasing, so that pruning keeps the newest even within one millisecond.
    this.at = Math.max(this.clock.now(), this.at + 1);
    this.sql('INSERT OR REPLACE INTO etags (image_id, etag, at) VALUES (?, ?, ?)').run(imageId, etag, this.at);
    const recorded = (this.recorded.get(imageId) ?? 0) + 1;
    this.recorded.set(imageId, recorded % KEPT_ETAGS);
    if (recorded < KEPT_ETAGS) return;
    this.sql(`DELETE FROM etags WHERE image_id = ? AND etag NOT IN (SELECT etag FROM etags WHERE image_id = ? ORDER BY at DESC LIMIT ${KEPT_ETAGS})`)
      .run(imageId, imageId);
  }

  has(imageId: number, etag: string): boolean {
    return this.sql('SELECT 1 FROM etags WHERE image_id = ? AND etag = ?').get(imageId, etag) !== undefined;
  }
}
