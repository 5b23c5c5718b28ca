/* Uploads never wait or retry forever: a refusal that retrying cannot fix stops an image's
 * uploads at once (logged once, status says why, the data stays) until a flush asks again;
 * an fsync with --sync cloud gives up when nothing could be uploaded for --io-timeout. */

import crypto from 'node:crypto';
import { BlobdiskError } from '../../lib/errors';
import { FaultyStore } from '../../lib/store/faulty';
import { MeteredStore } from '../../lib/store/metered';
import { DEFAULT_TUNABLES } from '../../lib/tunables';
import { harness } from '../support/image-harness';
import { ManualClock, driven, until } from '../support/manual-clock';
import { MemoryStore } from '../support/memory-store';

const G = 64 * 1024;

const page = { container: 'c', name: 'disk.img' };

it('a refused upload stops that image\'s uploads at once, keeps its data, and a flush tries again', async () => {
  const clock = new ManualClock();
  const memory = new MemoryStore({ containers: ['c'] });
  await memory.createPageBlob(page, 16 * G);
  const faulty = new FaultyStore(memory, clock);
  const metered = new MeteredStore(faulty);
  const h = harness(metered, { writeBackDelayMs: 100, timing: { clock, tunables: DEFAULT_TUNABLES } });
  try {
    const image = await h.open(page);
    const data = crypto.randomBytes(8192);
    const refusal = new BlobdiskError('denied', 'putPages failed: the SAS token does not allow writing blobs (403 AuthorizationPermissionMismatch)');
    const heal = faulty.inject({ ops: ['putPages'], times: Infinity, action: { kind: 'fail', error: refusal } });
    await image.write(data, 0);
    await clock.advance(100);
    await until(() => h.flusher.refusedOf(image) !== undefined);
    expect(h.flusher.refusedOf(image)).toMatch(/^uploads of c\/disk\.img stopped: putPages failed: the SAS token does not allow writing blobs .*; its changes stay in the cache/);
    // Not retried: time passes, nothing more is asked of Azure, the data waits in the cache.
    const asked = metered.byOp.get('putPages') ?? 0;
    await clock.advance(10 * DEFAULT_TUNABLES.maxBackoffMs);
    expect(metered.byOp.get('putPages') ?? 0).toBe(asked);
    expect(h.cache.dirtyOf(image.id).bytes).toBe(8192);
    // A flush tries again, and fails at once with the reason while Azure still refuses.
    await expect(driven(clock, h.flusher.flush([image]))).rejects.toMatchObject({ kind: 'denied', message: expect.stringContaining('does not allow writing blobs') as unknown });
    expect(metered.byOp.get('putPages') ?? 0).toBe(asked + 1);
    // Fixed (a new SAS, a role granted): the next flush uploads it all.
    heal();
    await driven(clock, h.flusher.flush([image]));
    expect(h.flusher.refusedOf(image)).toBeUndefined();
    expect(memory.contentOf(page).subarray(0, 8192).equals(data)).toBe(true);
  } finally {
    faulty.heal();
    await h.close();
  }
});

it('an fsync with --sync cloud fails (unavailable) when nothing could be uploaded for --io-timeout', async () => {
  const clock = new ManualClock();
  const memory = new MemoryStore({ containers: ['c'] });
  await memory.createPageBlob(page, 16 * G);
  const faulty = new FaultyStore(memory, clock);
  const h = harness(faulty, { sync: 'cloud', ioTimeoutMs: 30_000, timing: { clock, tunables: DEFAULT_TUNABLES } });
  try {
    const image = await h.open(page);
    await image.write(crypto.randomBytes(4096), 0);
    const hang = { ops: ['putPages'], times: Infinity, action: { kind: 'hang' } } as const;
    faulty.inject(hang);
    const fsync = image.fsync();
    fsync.catch(() => undefined);
    // The flush has begun, and its Put Page hangs: from here on, time is what the clock says.
    await until(() => faulty.hitsOf(hang) > 0);
    const started = clock.now();
    const failure = await driven(clock, fsync).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(failure).toMatchObject({ kind: 'unavailable', message: expect.stringContaining('nothing could be uploaded for 30 s; 4096 bytes stay dirty') as unknown });
    expect(clock.now() - started).toBeGreaterThanOrEqual(30_000);
    expect(clock.now() - started).toBeLessThan(31_000);
  } finally {
    faulty.heal();
    await h.close();
  }
});

it('an image whose backoff ends before the write-back delay of a later write is looked at once it is due, not in a busy loop', async () => {
  const clock = new ManualClock();
  const memory = new MemoryStore({ containers: ['c'] });
  await memory.createPageBlob(page, 16 * G);
  const faulty = new FaultyStore(memory, clock);
  const metered = new MeteredStore(faulty);
  const delay = 4 * DEFAULT_TUNABLES.minBackoffMs;
  const h = harness(metered, { writeBackDelayMs: delay, timing: { clock, tunables: DEFAULT_TUNABLES } });
  try {
    const image = await h.open(page);
    const unavailable = new BlobdiskError('unavailable', 'putPages failed: 503 ServerBusy');
    const fail = { ops: ['putPages'], times: 1, action: { kind: 'fail', error: unavailable } } as const;
    faulty.inject(fail);
    const first = crypto.randomBytes(4096);
    await image.write(first, 0);
    await clock.advance(delay);
    // The upload failed: the image backs off for minBackoffMs.
    await until(() => faulty.hitsOf(fail) > 0);
    await clock.advance(0);
    // Written again: due one write-back delay from now, well after the backoff ends.
    const second = crypto.randomBytes(4096);
    await image.write(second, 3 * G);
    // Time moves past the end of the backoff to the end of the delay. A flusher that looked
    // at the image at once, again and again, from the end of its backoff would never let the
    // clock get there.
    const moved = clock.advance(delay + 100).then(() => 'moved' as const);
    const stuck = new Promise<'stuck'>((r) => setTimeout(() => r('stuck'), 5_000));
    expect(await Promise.race([moved, stuck])).toBe('moved');
    await driven(clock, h.flusher.flush([image]));
    expect(memory.contentOf(page).subarray(0, 4096).equals(first)).toBe(true);
    expect(memory.contentOf(page).subarray(3 * G, 3 * G + 4096).equals(second)).toBe(true);
  } finally {
    faulty.heal();
    await h.close();
  }
});
