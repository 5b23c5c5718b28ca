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
    expect(SCHEMA_VERSION).toBe(1);
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
        'CREATE TABLE etags ( image_id INTEGER NOT NULL REFERENCES images (id) ON DELETE CASCADE, etag TEXT NOT NULL, ' +
        'at INTEGER NOT NULL, PRIMARY KEY (image_id, etag) ) WITHOUT ROWID;',
    );
    const map = GrainMap.open(path.join(tmp(), 'g.db'), 1 << 20);
    expect(map.schemaSql()).toHaveLength(5);
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
});
