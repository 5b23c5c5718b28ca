/* The grain map's on-disk format. SCHEMA_VERSION changes whenever SCHEMA does; a test
 * (test/unit/grainmap.test.ts) pins both, so a change without a version bump fails.
 * Opening a cache written by another version refuses with a clear message.
 *
 * Version 2 added the change log (grainmap.db.log, see log.ts) and the meta key log_seq:
 * the tables are those of version 1, which opens as version 2 at once; a version-1
 * blobdisk must not open a version-2 cache, as it would not see the changes in the log.
 * Version 3 added the table synced and the meta key boot_id (the boot of the machine the
 * last writer ran on); a version-2 cache gets the table at open, its dirty grains counted
 * as written in this boot (version 2 recorded no fsyncs).
 *
 * images  one row per blob ever opened: identity (account, container, name), the kind and
 *         logical size (ours: it runs ahead of Azure's while a size change waits for upload),
 *         the ETag that the cached grains belong to, the bytes in allocated page ranges for
 *         `allocated_etag` (st_blocks without a listing), and `remote_end`: after a shrink
 *         not yet uploaded, bytes of the blob in Azure from there on read as zeros.
 * grains  one row per grain that has bytes in the cache directory:
 *           checksum  CRC-32 of the grain file (grain-size bytes, holes as zeros) when clean
 *           valid     NULL = every 512-byte sector of the grain is present; else a bitmap
 *           dirty     NULL = clean; else a bitmap of sectors not yet uploaded
 *           last_access  for least-recently-used eviction of clean grains
 * synced  one row per dirty grain that an fsync made durable: its dirty bitmap then (the
 *         sectors that fsync acknowledged). Written only in fsync's FULL commit, after the
 *         grain files and their directories were synced, so after a power loss it says which
 *         sectors of the file hold acknowledged data, where the grains row cannot (SQLite and
 *         the change log reach the disk whenever the kernel writes them back, ahead of the
 *         grain bytes they describe). See lib/cache/power.ts.
 * etags   the ETags our own uploads produced lately (responses of concurrent uploads come
 *         back in any order): after a crash, a blob whose ETag is one of these was last
 *         changed by us, not by someone else, so its dirty grains are no conflict. */

export const SCHEMA_VERSION = 3;

/** The table version 3 added (a version-2 cache gets it at open). */
export const SYNCED = `
CREATE TABLE synced (
  image_id INTEGER NOT NULL,
  idx      INTEGER NOT NULL,
  dirty    BLOB NOT NULL,
  PRIMARY KEY (image_id, idx),
  FOREIGN KEY (image_id, idx) REFERENCES grains (image_id, idx) ON DELETE CASCADE
) WITHOUT ROWID;
`;

export const SCHEMA = `
CREATE TABLE meta (
  key   TEXT PRIMARY KEY,
  value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE images (
  id             INTEGER PRIMARY KEY,
  account        TEXT NOT NULL,
  container      TEXT NOT NULL,
  name           TEXT NOT NULL,
  kind           TEXT NOT NULL CHECK (kind IN ('page', 'block', 'append')),
  size           INTEGER NOT NULL,
  etag           TEXT,
  allocated      INTEGER,
  allocated_etag TEXT,
  remote_end     INTEGER,
  UNIQUE (account, container, name)
);
CREATE TABLE grains (
  image_id    INTEGER NOT NULL REFERENCES images (id) ON DELETE CASCADE,
  idx         INTEGER NOT NULL,
  length      INTEGER NOT NULL,
  checksum    INTEGER,
  valid       BLOB,
  dirty       BLOB,
  last_access INTEGER NOT NULL,
  PRIMARY KEY (image_id, idx)
) WITHOUT ROWID;
CREATE INDEX grains_dirty ON grains (image_id) WHERE dirty IS NOT NULL;
${SYNCED}CREATE TABLE etags (
  image_id INTEGER NOT NULL REFERENCES images (id) ON DELETE CASCADE,
  etag     TEXT NOT NULL,
  at       INTEGER NOT NULL,
  PRIMARY KEY (image_id, etag)
) WITHOUT ROWID;
`;
