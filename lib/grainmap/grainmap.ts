/* The grain map: which grains of which image are in the cache directory, and in what
 * state (see schema.ts). SQLite in WAL mode, through better-sqlite3, which is
 * synchronous: every method here is one short statement or one small transaction, and
 * hot paths batch (touches are written every few seconds, not per read).
 *
 * The write path's changes (putGrain, a new image size) are not SQLite commits: each is
 * one record appended to the change log (log.ts), committed once that returns, at a
 * tenth of a commit's cost. The records are folded into SQLite in one transaction every
 * foldMs or foldRecords (Tunables), and before any other method reads or changes the map, so the
 * log only ever holds changes newer than everything in SQLite and replaying it in order
 * (at open, after a crash) gives the state the crashed process had. */

import Database from 'better-sqlite3';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { BlobdiskError } from '../errors';
import { Logger, silentLogger } from '../log';
import { BlobKind } from '../store/types';
import { Timer } from '../clock';
import { SYSTEM_TIMING, Timing } from '../tunables';
import { Disk, MapIo, NODE_DISK } from './disk';
import { OwnEtags } from './etags';
import { GrainLog, LogRecord } from './log';
import { GrainRow, ImageRow, RawGrain, RawImage, SyncedRow, toGrain, toImage } from './rows';
import { SCHEMA, SCHEMA_VERSION, SYNCED } from './schema';
import { FoldReport, putSynced, readSynced } from './synced';

export type { GrainRow, ImageRow, MapIo, SyncedRow };

export class GrainMap {
  private readonly statements = new Map<string, Database.Statement>();
  private readonly etags: OwnEtags;
  private log: GrainLog | undefined;
  /** Number of the last logged change (SQLite holds those up to meta log_seq). */
  private seq = 0;
  /** Logged changes not yet in SQLite: the newest row per grain, the newest size per image. */
  private readonly pendingGrains = new Map<string, GrainRow>();
  private readonly pendingSizes = new Map<number, number>();
  private foldTimer: Timer | undefined;
  private readonly foldReport: FoldReport;

  private constructor(
    private readonly db: Database.Database,
    private readonly timing: Timing,
    private readonly file: string,
    readonly disk: Disk,
    report: Logger,
  ) {
    this.foldReport = new FoldReport(report, file, timing.tunables.foldMs);
    this.etags = new OwnEtags((text) => this.sql(text), timing.clock);
  }

  /** Prepared once per SQL text: preparing costs more than running on the write path. */
  private sql(text: string): Database.Statement {
    let statement = this.statements.get(text);
    if (!statement) {
      statement = this.db.prepare(text);
      this.statements.set(text, statement);
    }
    return statement;
  }

  /** Opens (creating when new) the grain map at `file`. A map written for another grain
   *  size is reset when it holds no dirty grains, refused (invalid) when it does. */
  static open(file: string, grainSize: number, timing: Timing = SYSTEM_TIMING, io: MapIo = {}): GrainMap {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    const db = new Database(file);
    try {
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = NORMAL');
      db.pragma('foreign_keys = ON');
      db.pragma('busy_timeout = 5000');
    } catch (e) {
      db.close();
      throw e;
    }
    const map = new GrainMap(db, timing, file, io.disk ?? NODE_DISK, io.log ?? silentLogger);
    try {
      map.prepare(grainSize, `${file}.log`);
      map.durable(); // a crash model's first copy of the database
    } catch (e) {
      map.close();
      throw e;
    }
    return map;
  }

  private prepare(grainSize: number, logFile: string): void {
    const hasMeta = this.sql("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").get();
    if (!hasMeta) {
      this.db.transaction(() => {
        this.db.exec(SCHEMA);
        this.setMeta('schema_version', String(SCHEMA_VERSION));
        this.setMeta('grain_size', String(grainSize));
      })();
      this.openLog(logFile);
      return;
    }
    const version = Number(this.getMeta('schema_version'));
    if (version === 1 || version === 2) {
      // Version 1 had no change log (nothing to replay), version 2 no record of fsyncs; from
      // now on only versions that read both may open this cache.
      this.db.transaction(() => {
        this.db.exec(SYNCED);
        this.setMeta('schema_version', String(SCHEMA_VERSION));
      })();
    } else if (version !== SCHEMA_VERSION) {
      throw new BlobdiskError(
        'invalid',
        `the cache was written by another blobdisk version (grain map schema ${version}, this one reads ${SCHEMA_VERSION}); ` +
          'unmount with that version to drain it, or give another --cache-dir',
      );
    }
    this.openLog(logFile);
    const stored = Number(this.getMeta('grain_size'));
    if (stored !== grainSize) {
      if (this.dirtyGrainCount() > 0) {
        throw new BlobdiskError(
          'invalid',
          `the cache holds data not yet uploaded with grain size ${stored} bytes; mount once with --grain-size ${stored} to upload it, or give another --cache-dir`,
        );
      }
      this.db.transaction(() => {
        this.db.exec('DELETE FROM grains');
        this.setMeta('grain_size', String(grainSize));
      })();
    }
  }

  /** Opens the change log, folds what a crashed process left in it into SQLite. */
  private openLog(file: string): void {
    const log = GrainLog.open(file, this.disk);
    this.log = log;
    this.seq = Number(this.getMeta('log_seq') ?? 0);
    if (!log.empty) {
      for (const { seq, record } of log.read(this.seq)) this.pend(seq, record);
      this.fold();
      log.clear();
    }
    this.foldTimer = this.timing.clock.interval(() => this.foldOrReport(), this.timing.tunables.foldMs);
  }

  /** fold(), for the timer and the write path: a failure is reported once (the changes stay
   *  committed in the log and the next fold tries again), and its end once too. A caller
   *  that reads the tables gets the error from fold() itself. */
  private foldOrReport(): void {
    try {
      this.fold();
      this.foldReport.worked();
    } catch (e) {
      this.foldReport.failed(e);
    }
  }

  /** Takes a logged change into the pending state (it is in the log already). */
  private pend(seq: number, record: LogRecord): void {
    this.seq = seq;
    if (record.kind === 'grain') this.pendingGrains.set(`${record.row.imageId}:${record.row.idx}`, record.row);
    else this.pendingSizes.set(record.imageId, record.size);
  }

  /** Commits a change by appending it to the log; folds when enough are pending. */
  private logChange(record: LogRecord): void {
    if (!this.log) throw new BlobdiskError('failed', 'the grain map is closed');
    const seq = this.seq + 1;
    this.log.append(seq, record);
    this.pend(seq, record);
    if (this.pendingGrains.size + this.pendingSizes.size >= this.timing.tunables.foldRecords) this.foldOrReport();
  }

  /** Writes the logged changes into SQLite in one transaction and empties the log (every
   *  method that reads or changes the tables calls this first). */
  private fold(): void {
    if (this.pendingGrains.size === 0 && this.pendingSizes.size === 0) return;
    // A row of an image deleted meanwhile (a write racing with an unlink) has nothing to join.
    const exists = this.sql('SELECT 1 FROM images WHERE id = ?');
    const size = this.sql('UPDATE images SET size = ? WHERE id = ?');
    this.db.transaction(() => {
      for (const row of this.pendingGrains.values()) if (exists.get(row.imageId) !== undefined) this.upsertGrain(row);
      for (const [id, bytes] of this.pendingSizes) size.run(bytes, id);
      this.setMeta('log_seq', String(this.seq));
    })();
    this.pendingGrains.clear();
    this.pendingSizes.clear();
    this.log?.clear();
  }

  /** The grain size the cache directory is laid out for (before open() reset it, the old one). */
  get grainSize(): number {
    return Number(this.getMeta('grain_size'));
  }

  private getMeta(key: string): string | undefined {
    const row = this.sql('SELECT value FROM meta WHERE key = ?').get(key) as { value: string } | undefined;
    return row?.value;
  }

  private setMeta(key: string, value: string): void {
    this.sql('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value').run(key, value);
  }

  /** The schema SQLite reports, for the test that pins it. */
  schemaSql(): string[] {
    const rows = this.sql("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY type, name").all() as { sql: string }[];
    return rows.map((r) => r.sql);
  }

  image(account: string, container: string, name: string): ImageRow | undefined {
    this.fold();
    const r = this.sql('SELECT * FROM images WHERE account = ? AND container = ? AND name = ?')
      .get(account, container, name) as RawImage | undefined;
    return r && toImage(r);
  }

  /** Returns the image's row, inserting it (with no ETag: nothing cached yet) when new. */
  ensureImage(account: string, container: string, name: string, kind: BlobKind, size: number): ImageRow {
    this.fold();
    this.sql('INSERT INTO images (account, container, name, kind, size) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING')
      .run(account, container, name, kind, size);
    const row = this.image(account, container, name);
    if (!row) throw new BlobdiskError('failed', `grain map lost the row of ${container}/${name}`);
    return row;
  }

  /** Changes an image's row. A change of the size alone (a write growing the image) is
   *  logged, the others are written to SQLite at once. */
  updateImage(
    id: number,
    fields: { kind?: BlobKind; size?: number; etag?: string | null; allocated?: number | null; allocatedEtag?: string | null; remoteEnd?: number | null },
  ): void {
    const given = Object.entries(fields).filter(([, v]) => v !== undefined);
    if (given.length === 1 && fields.size !== undefined) {
      this.logChange({ kind: 'size', imageId: id, size: fields.size });
      return;
    }
    this.fold();
    const sets: string[] = [];
    const values: unknown[] = [];
    const columns: Record<string, string> = { kind: 'kind', size: 'size', etag: 'etag', allocated: 'allocated', allocatedEtag: 'allocated_etag', remoteEnd: 'remote_end' };
    for (const [key, column] of Object.entries(columns)) {
      const value = (fields as Record<string, unknown>)[key];
      if (value !== undefined) {
        sets.push(`${column} = ?`);
        values.push(value);
      }
    }
    if (sets.length === 0) return;
    this.sql(`UPDATE images SET ${sets.join(', ')} WHERE id = ?`).run(...values, id);
  }

  /** Every grain row, least recently used first (to rebuild the cache index at mount). */
  allGrains(): GrainRow[] {
    this.fold();
    return (this.sql('SELECT * FROM grains ORDER BY last_access, image_id, idx').all() as RawGrain[]).map(toGrain);
  }

  grainsOf(imageId: number): GrainRow[] {
    this.fold();
    return (this.sql('SELECT * FROM grains WHERE image_id = ? ORDER BY idx').all(imageId) as RawGrain[]).map(toGrain);
  }

  grain(imageId: number, idx: number): GrainRow | undefined {
    this.fold();
    const r = this.sql('SELECT * FROM grains WHERE image_id = ? AND idx = ?').get(imageId, idx) as RawGrain | undefined;
    return r && toGrain(r);
  }

  /** Writes a grain's whole row (insert or replace), through the log: committed on return. */
  putGrain(row: GrainRow): void {
    this.logChange({ kind: 'grain', row });
  }

  private upsertGrain(row: GrainRow): void {
    this.sql(
        `INSERT INTO grains (image_id, idx, length, checksum, valid, dirty, last_access) VALUES (?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (image_id, idx) DO UPDATE SET length = excluded.length, checksum = excluded.checksum,
           valid = excluded.valid, dirty = excluded.dirty, last_access = excluded.last_access`,
      )
      .run(row.imageId, row.idx, row.length, row.checksum, row.valid, row.dirty, row.lastAccess);
  }

  /** Remembers an ETag one of our uploads produced (see OwnEtags). */
  recordEtag(imageId: number, etag: string): void {
    this.etags.record(imageId, etag);
  }

  isOurEtag(imageId: number, etag: string): boolean {
    return this.etags.has(imageId, etag);
  }

  /** Images that hold grains not yet uploaded (to drain after a crash). */
  imagesWithDirtyGrains(): ImageRow[] {
    this.fold();
    return (
      this.sql('SELECT * FROM images WHERE id IN (SELECT DISTINCT image_id FROM grains WHERE dirty IS NOT NULL) ORDER BY id').all() as RawImage[]
    ).map(toImage);
  }

  /** Gives the image's row another blob name (a rename); the grains stay with the row. */
  renameImage(id: number, container: string, name: string): void {
    this.fold();
    this.sql('UPDATE images SET container = ?, name = ? WHERE id = ?').run(container, name, id);
  }

  /** Forgets an image and all its grains (the blob was deleted). */
  deleteImage(id: number): void {
    this.fold();
    this.sql('DELETE FROM images WHERE id = ?').run(id);
  }

  /** Makes every committed change durable on disk (fsync of the WAL), for fsync(), with
   *  `synced`: dirty grains whose files were fdatasynced just before (see SyncedRow). */
  durable(synced: readonly SyncedRow[] = []): void {
    this.fold();
    this.db.pragma('synchronous = FULL');
    try {
      this.db.transaction(() => {
        putSynced(this.db, synced);
        this.setMeta('synced_at', String(this.timing.clock.now()));
      })();
    } finally {
      this.db.pragma('synchronous = NORMAL');
    }
    this.disk.committed(this.file);
  }

  /** What the last fsyncs recorded of grains dirty now (see SyncedRow; others are forgotten). */
  syncedGrains(): SyncedRow[] {
    this.fold();
    return readSynced(this.db);
  }

  /** The boot of the machine the last writer of this cache ran in (see Disk.bootId), when
   *  it was recorded; with `now`, records (durably) that the writer now runs in that one. */
  boot(now?: string): string | undefined {
    if (now === undefined) return this.getMeta('boot_id');
    this.setMeta('boot_id', now);
    this.durable();
    return now;
  }

  /** The lease id this cache directory proposes on `host`. Kept after a crash, so the next
   *  mount on the same host takes the leases of the dead one back; made anew for another host
   *  (a copied cache directory cannot claim this host's leases) and after a clean unmount. */
  leaseIdFor(host: string): string {
    const id = this.getMeta('lease_id');
    const at = this.getMeta('lease_host');
    // A cache of an older blobdisk kept no host: it was this one's.
    if (id && (at === host || at === undefined)) {
      if (at !== host) this.setMeta('lease_host', host);
      return id;
    }
    const fresh = crypto.randomUUID();
    this.setMeta('lease_id', fresh);
    this.setMeta('lease_host', host);
    return fresh;
  }

  /** After a clean unmount (every lease released): the next mount proposes a new id. */
  forgetLeaseId(): void {
    this.setMeta('lease_id', '');
  }

  /** Forgets grains (their files are gone or about to go). */
  deleteGrains(keys: ReadonlyArray<{ imageId: number; idx: number }>): void {
    if (keys.length === 0) return;
    this.fold();
    const del = this.sql('DELETE FROM grains WHERE image_id = ? AND idx = ?');
    this.db.transaction(() => {
      for (const k of keys) del.run(k.imageId, k.idx);
    })();
  }

  /** Writes the access times gathered since the last call, in one transaction. */
  touch(entries: ReadonlyArray<{ imageId: number; idx: number; at: number }>): void {
    if (entries.length === 0) return;
    this.fold();
    const upd = this.sql('UPDATE grains SET last_access = ? WHERE image_id = ? AND idx = ?');
    this.db.transaction(() => {
      for (const e of entries) upd.run(e.at, e.imageId, e.idx);
    })();
  }

  dirtyGrainCount(): number {
    this.fold();
    const row = this.sql('SELECT count(*) AS n FROM grains WHERE dirty IS NOT NULL').get() as { n: number };
    return row.n;
  }

  close(): void {
    this.foldTimer?.cancel();
    this.foldTimer = undefined;
    if (this.db.open) this.fold();
    this.log?.close();
    this.log = undefined;
    if (this.db.open) this.db.close();
  }
}
