import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { GrainMap } from '../../lib/grainmap/grainmap';
import { SCHEMA, SCHEMA_VERSION } from '../../lib/grainmap/schema';

const tmp = (): string => fs.mkdtempSync(path.join(os.tmpdir(), 'blobdisk-gm-'));

describe('GrainMap', () => {
  it('pins the on-disk schema: changing it needs a version bump and a migration', () => {
    // If this fails, the grain map format changed: bump SCHEMA_VERSION, teach
    // GrainMap.open() to migrate or refuse older caches, then update this pin.
    expect(SCHEMA_VERSION).toBe(3);
    const normalized = SCHEMA.replace(/\s+/g, ' ').trim();
    expect(normalized).toBe(
      'CREATE TABLE meta ( key TEXT PRIMARY KEY, value TEXT NOT NULL ) WITHOUT ROWID; ' +
        'CREATE TABLE images ( id INTEGER PRIMARY KEY, account TEXT NOT NULL, container TEXT NOT NULL, name TEXT NOT NULL, ' +
        "kind TEXT NOT NULL CHECK (kind IN ('page', 'block', 'append')), size INTEGER NOT NULL, etag TEXT, allocated INTEGER, " +
        'allocated_etag TEXT, remote_end INTEGER, UNIQUE (account, container, name) ); ' +
        'CREATE TABLE grains ( image_id INTEGER NOT NULL REFERENCES images (id) ON DELETE CASCADE, idx INTEGER NOT NULL, ' +
        'length INTEGER NOT NULL, checksum INTEGER, valid BLOB, dirty BLOB, last_access INTEGER NOT NULL, ' +
        'PRIMARY KEY (image_id, idx) ) WITHOUT ROWID; ' +
        'CREATE INDEX grains_dirty ON grains (image_id) WHERE dirty IS NOT NULL; ' +
        'CREATE TABLE synced ( image_id INTEGER NOT NULL, idx INTEGER NOT NULL, ' +
        'dirty BLOB NOT NULL, PRIMARY KEY (image_id, idx), FOREIGN KEY (image_id, idx) REFERENCES grains (image_id, idx) ON DELETE CASCADE ) WITHOUT ROWID; ' +
        'CREATE TABLE etags ( image_id INTEGER NOT NULL REFERENCES images (id) ON DELETE CASCADE, etag TEXT NOT NULL, ' +
        'at INTEGER NOT NULL, PRIMARY KEY (image_id, etag) ) WITHOUT ROWID;',
    );
    const map = GrainMap.open(path.join(tmp(), 'g.db'), 1 << 20);
    expect(map.schemaSql()).toHaveLength(6);
    map.close();
  });

  it('keeps images and clean grains across reopen', () => {
    const file = path.join(tmp(), 'g.db');
    const a = GrainMap.open(file, 1 << 20);
    const img = a.ensureImage('acct', 'c', 'disk.img', 'page', 1 << 30);
    expect(a.ensureImage('acct', 'c', 'disk.img', 'page', 1 << 30).id).toBe(img.id);
    a.updateImage(img.id, { etag: '"e1"', allocated: 4096, allocatedEtag: '"e1"' });
    a.putGrain({ imageId: img.id, idx: 3, length: 1 << 20, checksum: 1234, valid: null, dirty: null, lastAccess: 10 });
    a.putGrain({ imageId: img.id, idx: 1, length: 1 << 20, checksum: 99, valid: null, dirty: null, lastAccess: 5 });
    a.close();

    const b = GrainMap.open(file, 1 << 20);
    expect(b.image('acct', 'c', 'disk.img')).toMatchObject({ id: img.id, etag: '"e1"', allocated: 4096, allocatedEtag: '"e1"', kind: 'page' });
    expect(b.image('other', 'c', 'disk.img')).toBeUndefined();
    expect(b.allGrains().map((g) => g.idx)).toEqual([1, 3]); // least recently used first
    b.touch([{ imageId: img.id, idx: 1, at: 50 }]);
    expect(b.allGrains().map((g) => g.idx)).toEqual([3, 1]);
    b.deleteGrains([{ imageId: img.id, idx: 3 }]);
    expect(b.grainsOf(img.id)).toEqual([expect.objectContaining({ idx: 1, checksum: 99, dirty: null, valid: null })]);
    b.close();
  });

  it('drops clean grains when the grain size changes', () => {
    const file = path.join(tmp(), 'g.db');
    const a = GrainMap.open(file, 1 << 20);
    const img = a.ensureImage('acct', 'c', 'x', 'block', 100);
    a.putGrain({ imageId: img.id, idx: 0, length: 100, checksum: 1, valid: null, dirty: null, lastAccess: 1 });
    a.close();
    const b = GrainMap.open(file, 1 << 22);
    expect(b.grainSize).toBe(1 << 22);
    expect(b.allGrains()).toEqual([]);
    b.close();
  });

  it('refuses a cache written by another schema version with a clear message', () => {
    const file = path.join(tmp(), 'g.db');
    GrainMap.open(file, 1 << 20).close();
    const Database = require('better-sqlite3');
    const db = new Database(file);
    db.prepare("UPDATE meta SET value = '99' WHERE key = 'schema_version'").run();
    db.close();
    expect(() => GrainMap.open(file, 1 << 20)).toThrow(/another blobdisk version \(grain map schema 99/);
  });

  it('remembers at least the last 64 ETags of our uploads per image, pruning older ones in batches', () => {
    const map = GrainMap.open(path.join(tmp(), 'g.db'), 1 << 20);
    const img = map.ensureImage('acct', 'c', 'disk.img', 'page', 1 << 30);
    for (let i = 0; i < 300; i++) {
      map.recordEtag(img.id, `"0x${i}"`);
      for (const back of [0, 1, 63]) if (i - back >= 0) expect(map.isOurEtag(img.id, `"0x${i - back}"`)).toBe(true);
    }
    expect(map.isOurEtag(img.id, '"0x0"')).toBe(false);
    expect(map.isOurEtag(img.id, '"0x100"')).toBe(false);
    map.close();
  });

  describe('change log', () => {
    /** The files as a kill -9 leaves them: copied while the map is still open, nothing folded. */
    const crashCopy = (file: string): string => {
      const dest = path.join(tmp(), 'g.db');
      for (const suffix of ['', '-wal', '.log']) if (fs.existsSync(file + suffix)) fs.copyFileSync(file + suffix, dest + suffix);
      return dest;
    };
    const dirty = (bits: number): Buffer => Buffer.from([bits, 0, 0, 0]);

    it('keeps logged grain rows and image sizes across a crash before any fold', () => {
      const file = path.join(tmp(), 'g.db');
      const a = GrainMap.open(file, 1 << 20);
      const img = a.ensureImage('acct', 'c', 'disk.img', 'page', 0);
      a.putGrain({ imageId: img.id, idx: 0, length: 1 << 20, checksum: null, valid: dirty(1), dirty: dirty(1), lastAccess: 7 });
      a.updateImage(img.id, { size: 512 });
      a.putGrain({ imageId: img.id, idx: 0, length: 1 << 20, checksum: null, valid: dirty(3), dirty: dirty(3), lastAccess: 7 });
      a.updateImage(img.id, { size: 1024 });
      expect(fs.statSync(`${file}.log`).size).toBeGreaterThan(0); // still only in the log
      const copy = crashCopy(file);
      a.close();
      expect(fs.statSync(`${file}.log`).size).toBe(0); // folded at close

      const b = GrainMap.open(copy, 1 << 20);
      expect(b.image('acct', 'c', 'disk.img')?.size).toBe(1024);
      expect(b.imagesWithDirtyGrains().map((r) => r.id)).toEqual([img.id]);
      expect(b.grain(img.id, 0)).toMatchObject({ valid: dirty(3), dirty: dirty(3), checksum: null, lastAccess: 7 });
      expect(fs.statSync(`${copy}.log`).size).toBe(0); // replayed into SQLite at open
      b.close();
    });

    it('replays up to a torn record and drops it', () => {
      const file = path.join(tmp(), 'g.db');
      const a = GrainMap.open(file, 1 << 20);
      const img = a.ensureImage('acct', 'c', 'disk.img', 'page', 0);
      a.putGrain({ imageId: img.id, idx: 0, length: 1 << 20, checksum: null, valid: dirty(1), dirty: dirty(1), lastAccess: 1 });
      const whole = fs.statSync(`${file}.log`).size;
      a.putGrain({ imageId: img.id, idx: 1, length: 1 << 20, checksum: null, valid: dirty(1), dirty: dirty(1), lastAccess: 1 });
      const copy = crashCopy(file);
      a.close();
      fs.truncateSync(`${copy}.log`, whole + 20); // the second record only half there

      const b = GrainMap.open(copy, 1 << 20);
      expect(b.grainsOf(img.id).map((g) => g.idx)).toEqual([0]);
      b.putGrain({ imageId: img.id, idx: 2, length: 1 << 20, checksum: null, valid: null, dirty: dirty(1), lastAccess: 1 });
      b.close();
      const c = GrainMap.open(copy, 1 << 20);
      expect(c.grainsOf(img.id).map((g) => g.idx)).toEqual([0, 2]);
      c.close();
    });

    it('skips records SQLite already holds, so a log whose emptying was lost cannot undo later changes', () => {
      const file = path.join(tmp(), 'g.db');
      const a = GrainMap.open(file, 1 << 20);
      const img = a.ensureImage('acct', 'c', 'disk.img', 'page', 0);
      a.putGrain({ imageId: img.id, idx: 0, length: 1 << 20, checksum: null, valid: null, dirty: dirty(1), lastAccess: 1 });
      const stale = fs.readFileSync(`${file}.log`);
      a.deleteGrains([{ imageId: img.id, idx: 0 }]); // folds the record, then deletes the grain
      expect(fs.statSync(`${file}.log`).size).toBe(0);
      fs.writeFileSync(`${file}.log`, stale); // as if the emptying never reached the disk
      const copy = crashCopy(file);
      a.close();

      const b = GrainMap.open(copy, 1 << 20);
      expect(b.grainsOf(img.id)).toEqual([]);
      b.close();
    });

    it('drops a logged row of an image deleted before the fold', () => {
      const a = GrainMap.open(path.join(tmp(), 'g.db'), 1 << 20);
      const img = a.ensureImage('acct', 'c', 'gone.img', 'page', 0);
      a.deleteImage(img.id);
      a.putGrain({ imageId: img.id, idx: 0, length: 1 << 20, checksum: null, valid: null, dirty: dirty(1), lastAccess: 1 });
      expect(a.allGrains()).toEqual([]);
      a.close();
    });

    it.each([1, 2])('opens a version %i cache as version 3, with a record of fsyncs', (version) => {
      const file = path.join(tmp(), 'g.db');
      const a = GrainMap.open(file, 1 << 20);
      const img = a.ensureImage('acct', 'c', 'disk.img', 'page', 4096);
      a.close();
      if (version === 1) fs.rmSync(`${file}.log`);
      const Database = require('better-sqlite3');
      const db = new Database(file);
      db.prepare("UPDATE meta SET value = ? WHERE key = 'schema_version'").run(String(version));
      db.exec('DROP TABLE synced');
      db.close();

      const b = GrainMap.open(file, 1 << 20);
      expect(b.image('acct', 'c', 'disk.img')).toMatchObject({ id: img.id, size: 4096 });
      expect(b.syncedGrains()).toEqual([]);
      expect(b.boot()).toBeUndefined(); // dirty grains of an older version count as written in this boot
      b.close();
      const check = new Database(file);
      expect(check.prepare("SELECT value FROM meta WHERE key = 'schema_version'").get()).toEqual({ value: '3' });
      check.close();
    });
  });
});

describe('lease ids', () => {
  it('are kept for the same host after a crash, new for another host (a copied cache) and after a clean unmount', () => {
    const file = path.join(tmp(), 'g.db');
    const map = GrainMap.open(file, 1 << 20);
    const first = map.leaseIdFor('machine-a/host-a');
    map.close();
    // A crash: the next mount on the same host proposes the same id and gets its leases back.
    const again = GrainMap.open(file, 1 << 20);
    expect(again.leaseIdFor('machine-a/host-a')).toBe(first);
    again.close();
    // The directory copied to another machine: a new id there, never the first host's.
    const copy = path.join(tmp(), 'copy.db');
    fs.copyFileSync(file, copy);
    const elsewhere = GrainMap.open(copy, 1 << 20);
    const other = elsewhere.leaseIdFor('machine-b/host-b');
    expect(other).not.toBe(first);
    expect(other).toMatch(/^[0-9a-f-]{36}$/);
    elsewhere.close();
    // A clean unmount let go of every lease: the next mount proposes a fresh id.
    const clean = GrainMap.open(file, 1 << 20);
    clean.forgetLeaseId();
    clean.close();
    const next = GrainMap.open(file, 1 << 20);
    const fresh = next.leaseIdFor('machine-a/host-a');
    expect(fresh).not.toBe(first);
    expect(next.leaseIdFor('machine-a/host-a')).toBe(fresh);
    next.close();
  });
});
