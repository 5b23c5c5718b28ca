/* When Azure does not answer, what the mount already knows is answered within
 * staleAnswerMs instead of after --io-timeout: a listing past its time, an open of an image
 * the mount knows, st_blocks. An image the mount holds the lease of needs no Azure at all.
 * Time is a ManualClock; Azure's silence is a FaultyStore that hangs. */

import { BlobdiskError } from '../../lib/errors';
import type { Logger } from '../../lib/log';
import { Namespace } from '../../lib/namespace/namespace';
import { FaultyStore } from '../../lib/store/faulty';
import { DEFAULT_TUNABLES } from '../../lib/tunables';
import { harness } from '../support/image-harness';
import { ManualClock } from '../support/manual-clock';
import { MemoryStore } from '../support/memory-store';

const OPTS = { container: 'c', attrTtlMs: 5_000, readOnly: false, pageBlobPatterns: ['*.img'] };

function setup() {
  const memory = new MemoryStore({ containers: ['c'] });
  const clock = new ManualClock();
  const store = new FaultyStore(memory, clock);
  const timing = { clock, tunables: DEFAULT_TUNABLES };
  const h = harness(store, { timing });
  const warnings: string[] = [];
  const log: Logger = { debug: () => undefined, info: () => undefined, warn: (m) => warnings.push(m), error: () => undefined };
  const ns = new Namespace(store, h.images, OPTS, log, clock, DEFAULT_TUNABLES);
  return { memory, clock, store, h, ns, warnings };
}

/** Settles `p` while moving the clock by `ms`; 'pending' when it has not settled by then. */
async function after<T>(clock: ManualClock, ms: number, p: Promise<T>): Promise<T | 'pending'> {
  let settled = false;
  const watched = p.finally(() => (settled = true));
  watched.catch(() => undefined);
  await clock.advance(ms);
  return settled ? watched : 'pending';
}

const hang = { kind: 'hang' } as const;

describe('Azure silent: what the mount knows is answered within staleAnswerMs', () => {
  it('a listing past its time is answered from the last one, and the next answer replaces it', async () => {
    const { memory, clock, store, h, ns } = setup();
    try {
      await memory.createPageBlob({ container: 'c', name: 'a.img' }, 4096);
      expect(await ns.readdir('/')).toEqual(['a.img']);
      await clock.advance(OPTS.attrTtlMs + 1);
      const heal = store.inject({ ops: ['listDirectory'], times: Infinity, action: hang });
      expect(await after(clock, DEFAULT_TUNABLES.staleAnswerMs - 1, ns.readdir('/'))).toBe('pending');
      const names = ns.readdir('/');
      expect(await after(clock, DEFAULT_TUNABLES.staleAnswerMs, names)).toEqual(['a.img']);
      // Azure answers again: the listing that hung lands and shows the new blob.
      await memory.createPageBlob({ container: 'c', name: 'b.img' }, 4096);
      heal();
      await clock.advance(1);
      expect(await ns.readdir('/')).toEqual(['a.img', 'b.img']);
    } finally {
      store.heal();
      await h.close();
    }
  });

  it('an image the mount holds the lease of opens without asking Azure anything', async () => {
    const { clock, store, h, ns } = setup();
    try {
      const image = await ns.create('/leased.img');
      expect(image.remote.leaseId).toBeDefined();
      await clock.advance(OPTS.attrTtlMs + 1);
      store.inject({ times: Infinity, action: hang });
      expect(await after(clock, 0, ns.openForWrite('/leased.img'))).toBe(image);
    } finally {
      store.heal();
      await h.close();
    }
  });

  it('a known image not leased is answered after staleAnswerMs, said once in the log; an unknown one waits for Azure', async () => {
    const { memory, clock, store, h, ns, warnings } = setup();
    try {
      await memory.createPageBlob({ container: 'c', name: 'seen.img' }, 8192);
      await memory.createPageBlob({ container: 'c', name: 'unseen.img' }, 8192);
      const seen = await ns.open('/seen.img');
      expect(seen.remote.leaseId).toBeUndefined();
      store.inject({ ops: ['getInfo', 'pageRanges'], times: Infinity, action: hang });
      expect(await after(clock, DEFAULT_TUNABLES.staleAnswerMs, ns.open('/seen.img'))).toBe(seen);
      expect(await after(clock, DEFAULT_TUNABLES.staleAnswerMs, ns.open('/seen.img'))).toBe(seen);
      expect(warnings.filter((w) => w.includes('c/seen.img'))).toEqual([`cannot check c/seen.img with Azure (no answer within ${DEFAULT_TUNABLES.staleAnswerMs} ms); using what this mount knows of it`]);
      // stat answers too, with st_blocks from what the mount last knew.
      expect(await after(clock, DEFAULT_TUNABLES.staleAnswerMs, ns.getattr('/seen.img'))).toMatchObject({ type: 'file', size: 8192 });
      // Nothing known of this one: it waits for Azure (the store's deadline, --io-timeout, ends that).
      expect(await after(clock, 10 * DEFAULT_TUNABLES.staleAnswerMs, ns.open('/unseen.img'))).toBe('pending');
    } finally {
      store.heal();
      await h.close();
    }
  });

  it('an open that Azure refuses for a reason other than silence fails as before', async () => {
    const { memory, clock, store, h, ns } = setup();
    try {
      await memory.createPageBlob({ container: 'c', name: 'x.img' }, 4096);
      await ns.open('/x.img');
      store.inject({ ops: ['getInfo'], action: { kind: 'fail', error: new BlobdiskError('denied', 'getInfo failed: refused') } });
      await expect(after(clock, 0, ns.open('/x.img'))).rejects.toMatchObject({ kind: 'denied' });
    } finally {
      store.heal();
      await h.close();
    }
  });
});
