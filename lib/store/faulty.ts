/* FaultyStore: wraps any store and, for the calls a fault matches (by operation and blob),
 * fails them, answers late, waits for a signal, hangs, or cuts a read's body short or with
 * a reset. For tests (unit over the in-memory store, end-to-end over Azurite): faults are
 * decorators, never patches of a store's methods.
 *
 *   action   what a matching call does
 *   fail     rejects with `error` (nothing reaches the wrapped store)
 *   delay    reaches the wrapped store `ms` later
 *   wait     reaches the wrapped store once `until()` settles (a test's gate; it runs once per call)
 *   hang     never answers until the fault is removed (heal() or the remover), then proceeds
 *   short    (read) the body ends after `bytes` bytes, as if the server closed early
 *   reset    (read) the body fails with `unavailable` after `bytes` bytes (connection reset)
 *
 * A fault lets `skip` matching calls pass first, then affects `times` of them (1 by
 * default; Infinity: until removed). The first fault that matches a call acts on it. */

import { Clock, systemClock } from '../clock';
import { BlobdiskError } from '../errors';
import { StoreDecorator, type StoreOp, type Target } from './decorator';
import type { BlobStore } from './types';

export type FaultAction =
  | { readonly kind: 'fail'; readonly error: BlobdiskError }
  | { readonly kind: 'delay'; readonly ms: number }
  | { readonly kind: 'wait'; readonly until: () => Promise<unknown> }
  | { readonly kind: 'hang' }
  | { readonly kind: 'short'; readonly bytes: number }
  | { readonly kind: 'reset'; readonly bytes: number };

export interface Fault {
  /** The operations it applies to (all when absent). */
  readonly ops?: readonly StoreOp[];
  /** The container, and optionally the blob, it applies to (all when absent). */
  readonly blob?: Target;
  /** Matching calls that pass untouched before it acts (default 0). */
  readonly skip?: number;
  /** Matching calls it acts on (default 1; Infinity until removed). */
  readonly times?: number;
  readonly action: FaultAction;
}

interface Active {
  readonly fault: Fault;
  skip: number;
  times: number;
  /** Calls hanging on it, released when it is removed. */
  readonly hanging: (() => void)[];
  removed: boolean;
}

export class FaultyStore extends StoreDecorator {
  private readonly active: Active[] = [];
  /** Faults that have calls hanging on them (they may have run out of `times` already). */
  private readonly hangs = new Set<Active>();
  /** Calls each fault has acted on, by the fault. */
  private readonly hits = new Map<Fault, number>();

  constructor(
    inner: BlobStore,
    private readonly clock: Clock = systemClock,
  ) {
    super(inner);
  }

  /** Adds a fault; returns what removes it (releasing calls that hang on it). */
  inject(fault: Fault): () => void {
    const active: Active = { fault, skip: fault.skip ?? 0, times: fault.times ?? 1, hanging: [], removed: false };
    this.active.push(active);
    return () => this.remove(active);
  }

  /** Removes every fault; calls that hang proceed. */
  heal(): void {
    for (const a of [...this.active, ...this.hangs]) this.remove(a);
  }

  /** How many calls `fault` acted on so far. */
  hitsOf(fault: Fault): number {
    return this.hits.get(fault) ?? 0;
  }

  private remove(active: Active): void {
    active.removed = true;
    this.hangs.delete(active);
    const at = this.active.indexOf(active);
    if (at >= 0) this.active.splice(at, 1);
    for (const release of active.hanging.splice(0)) release();
  }

  /** The fault that acts on this call, if any (counting it). */
  private take(op: StoreOp, target: Target): Active | undefined {
    for (const a of this.active) {
      const { ops, blob } = a.fault;
      if (ops !== undefined && !ops.includes(op)) continue;
      if (blob?.container !== undefined && blob.container !== target.container) continue;
      if (blob?.name !== undefined && blob.name !== target.name) continue;
      if (a.skip > 0) {
        a.skip--;
        continue;
      }
      if (--a.times <= 0) this.active.splice(this.active.indexOf(a), 1);
      this.hits.set(a.fault, (this.hits.get(a.fault) ?? 0) + 1);
      return a;
    }
    return undefined;
  }

  protected async around<T>(op: StoreOp, target: Target, call: () => Promise<T>): Promise<T> {
    const a = this.take(op, target);
    if (a === undefined) return call();
    const action = a.fault.action;
    switch (action.kind) {
      case 'fail':
        throw action.error;
      case 'delay':
        await this.clock.sleep(action.ms);
        break;
      case 'wait':
        await action.until();
        break;
      case 'hang':
        // Released when the fault is removed; if it already was, at once.
        if (!a.removed) {
          this.hangs.add(a);
          await new Promise<void>((r) => a.hanging.push(r));
        }
        break;
      case 'short':
      case 'reset':
        if (op !== 'read') throw new BlobdiskError('invalid', `a ${action.kind} fault only applies to read, not ${op}`);
        return cut((await call()) as AsyncIterable<Buffer>, action.kind, action.bytes, target) as T;
    }
    return call();
  }
}

/** The body of a read, ended (short) or failed (reset) after `bytes` bytes. */
async function* cut(body: AsyncIterable<Buffer>, how: 'short' | 'reset', bytes: number, target: Target): AsyncGenerator<Buffer> {
  let sent = 0;
  for await (const chunk of body) {
    const take = Math.min(chunk.length, bytes - sent);
    if (take > 0) yield chunk.subarray(0, take);
    sent += take;
    if (sent >= bytes) break;
  }
  if (how === 'reset') throw new BlobdiskError('unavailable', `read ${target.container ?? ''}/${target.name ?? ''} failed: connection reset (injected)`);
}
