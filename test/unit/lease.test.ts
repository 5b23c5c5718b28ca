/* The lease lifecycle of lib/remote/lease.ts, row by row of its table, with time moved by
 * a ManualClock: no test here waits for a renewal in real time. */

import { BlobdiskError } from '../../lib/errors';
import { silentLogger } from '../../lib/log';
import { Lease } from '../../lib/remote/lease';
import { FaultyStore } from '../../lib/store/faulty';
import { MeteredStore } from '../../lib/store/metered';
import { ManualClock } from '../support/manual-clock';
import { MemoryStore } from '../support/memory-store';

const ref = { container: 'c', name: 'disk.img' };
const ID = '00000000-0000-0000-0000-00000000abcd';

async function setup(): Promise<{ memory: MemoryStore; faulty: FaultyStore; metered: MeteredStore; clock: ManualClock; lease: Lease; lost: string[] }> {
  const memory = new MemoryStore({ containers: ['c'] });
  await memory.createPageBlob(ref, 4096);
  const known = (await memory.getInfo(ref)).etag;
  const faulty = new FaultyStore(memory);
  const metered = new MeteredStore(faulty);
  const clock = new ManualClock();
  const lost: string[] = [];
  const lease = new Lease({ store: metered, log: silentLogger, proposedId: ID, clock, seconds: 60 }, () => ref, (reason) => lost.push(reason), () => known);
  return { memory, faulty, metered, clock, lease, lost };
}

describe('Lease', () => {
  test('free → held: takes the lease once, proposing our id; writes carry it', async () => {
    const { metered, lease } = await setup();
    // Without the lease nothing may be written; deleting or moving needs no lease.
    expect(() => lease.conditions()).toThrow('no lease is held on c/disk.img; nothing is written to Azure without it');
    expect(lease.heldConditions()).toEqual({});
    await Promise.all([lease.take(), lease.take()]);
    await lease.take();
    expect(lease.id).toBe(ID);
    expect(metered.byOp.get('acquireLease')).toBe(1);
    expect(lease.conditions()).toEqual({ leaseId: ID });
  });

  test('held: renewed every third of its duration; after a failed renewal the next tick retakes it with If-Match', async () => {
    const { faulty, metered, clock, lease, lost } = await setup();
    await lease.take();
    await clock.advance(19_999);
    expect(metered.byOp.get('renewLease')).toBeUndefined();
    await clock.advance(1);
    expect(metered.byOp.get('renewLease')).toBe(1);
    faulty.inject({ ops: ['renewLease'], action: { kind: 'fail', error: new BlobdiskError('unavailable', 'Azure is down') } });
    await clock.advance(20_000);
    expect(lease.id).toBe(ID);
    await clock.advance(20_000); // the lease may have run out meanwhile: acquired again, same id, same ETag
    expect([metered.byOp.get('renewLease'), metered.byOp.get('acquireLease')]).toEqual([2, 2]);
    await clock.advance(20_000); // and renewed as usual after that
    expect([metered.byOp.get('renewLease'), metered.byOp.get('acquireLease')]).toEqual([3, 2]);
    expect(lost).toEqual([]);
  });

  test('held → lost: a blob changed while its lease could not be renewed is not taken back (If-Match)', async () => {
    const { memory, faulty, clock, lease, lost } = await setup();
    await lease.take();
    faulty.inject({ ops: ['renewLease'], action: { kind: 'fail', error: new BlobdiskError('unavailable', 'Azure is down') } });
    await clock.advance(20_000);
    // Meanwhile the lease ran out and another writer changed the blob, then let go.
    await memory.breakLease(ref);
    await memory.putPages(ref, 0, Buffer.alloc(512, 9));
    await clock.advance(20_000);
    expect(lost).toEqual(['c/disk.img changed in Azure while its lease could not be renewed; nothing of it is overwritten']);
    expect(lease.state).toBe('lost');
    expect((await memory.getInfo(ref)).leased).toBe(false);
  });

  test('held → lost: a renewal refused (another writer broke and took it) reports the loss once and stops', async () => {
    const { memory, metered, clock, lease, lost } = await setup();
    await lease.take();
    await memory.breakLease(ref);
    await memory.acquireLease(ref, 60); // another host
    await clock.advance(20_000);
    expect(lost).toHaveLength(1);
    expect(lost[0]).toMatch(/lost the lease on c\/disk\.img \(busy\)/);
    expect(lease.id).toBeUndefined();
    await clock.advance(60_000);
    expect(metered.byOp.get('renewLease')).toBe(1);
  });

  test('taking: refused while another writer holds it (busy), and the next take tries again', async () => {
    const { memory, lease } = await setup();
    const other = await memory.acquireLease(ref, 60);
    await expect(lease.take()).rejects.toMatchObject({ kind: 'busy' });
    expect(lease.id).toBeUndefined();
    await memory.releaseLease(ref, other);
    await lease.take();
    expect(lease.id).toBe(ID);
  });

  test('held → free: drop() forgets without telling Azure; release() tells Azure', async () => {
    const { memory, metered, clock, lease } = await setup();
    await lease.take();
    lease.drop();
    expect(lease.id).toBeUndefined();
    expect((await memory.getInfo(ref)).leased).toBe(true); // still Azure's until it expires
    await clock.advance(60_000);
    expect(metered.byOp.get('renewLease')).toBeUndefined();
    await lease.take(); // retake: the same proposed id gets it back
    expect(await lease.release()).toBe(true);
    expect((await memory.getInfo(ref)).leased).toBe(false);
    expect(await lease.release()).toBe(false);
  });
});

describe('Lease: retaken after an outage that outlasted it (the store keeps time with the lease)', () => {
  async function outage(): Promise<{ memory: MemoryStore; clock: ManualClock; lease: Lease; lost: string[]; heal: () => void }> {
    const clock = new ManualClock();
    const memory = new MemoryStore({ containers: ['c'], clock });
    await memory.createPageBlob(ref, 4096);
    const etag = (await memory.getInfo(ref)).etag;
    const faulty = new FaultyStore(memory);
    const lost: string[] = [];
    const lease = new Lease({ store: faulty, log: silentLogger, proposedId: ID, clock, seconds: 15 }, () => ref, (reason) => lost.push(reason), () => etag);
    await lease.take();
    // Azure stops answering: renewals (and retakes) fail without an answer for a minute.
    const heal = faulty.inject({ ops: ['renewLease', 'acquireLease'], action: { kind: 'fail', error: new BlobdiskError('unavailable', 'no answer') }, times: Infinity });
    await clock.advance(60_000);
    expect(lease.id).toBe(ID);
    return { memory, clock, lease, lost, heal };
  }

  test('changes that are ours (an unanswered renewal took it back, then an unanswered upload): kept, no conflict', async () => {
    const { memory, clock, lease, lost, heal } = await outage();
    // Requests whose answers were lost: a renewal after the lease ran out, then an upload under it.
    await memory.renewLease(ref, ID);
    await memory.putPages(ref, 0, Buffer.alloc(512, 7), { leaseId: ID });
    heal();
    await clock.advance(5_000);
    expect(lost).toEqual([]);
    expect(lease.state).toBe('held');
    expect((await memory.getInfo(ref)).leased).toBe(true);
  });

  test('a change by someone else after the lease ran out (no lease needed then): lost, a conflict', async () => {
    const { memory, clock, lease, lost, heal } = await outage();
    await memory.putPages(ref, 0, Buffer.alloc(512, 9));
    // Our renewal that arrives late is refused too: the blob changed since the lease ran out.
    await expect(memory.renewLease(ref, ID)).rejects.toMatchObject({ kind: 'busy' });
    heal();
    await clock.advance(5_000);
    expect(lost).toEqual(['c/disk.img changed in Azure while its lease could not be renewed; nothing of it is overwritten']);
    expect(lease.state).toBe('lost');
  });
});
