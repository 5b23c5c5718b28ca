/* MeteredStore: counts what goes through a store (requests, bytes down and up) for
 * `blobdisk status` and for tests that prove a hit makes no request. A request is one
 * store operation, counted when it starts; bytes down when a read's body yields them,
 * bytes up when a Put Page or Put Block starts. Each request is also reported as it ends
 * (operation, seconds, outcome, status and code) to an observer, the metrics' source, and
 * the store remembers since when Azure has not answered at all. */

import { performance } from 'node:perf_hooks';
import { systemClock, type Clock } from '../clock';
import { isBlobdiskError } from '../errors';
import { azureCode } from './azure/errors';
import { StoreDecorator, type StoreOp, type Target } from './decorator';
import type { BlobRef, BlobStore, DirectRead, ReadBody, ReadOptions, StoreCounters, WriteConditions } from './types';

/** One store request, as it ended. */
export interface RequestEnd {
  readonly op: StoreOp;
  readonly seconds: number;
  /** 'ok', or the error's kind (not-found, busy, unavailable, ...). */
  readonly outcome: string;
  /** HTTP status and service code of a failure, e.g. "412 ConditionNotMet", when Azure answered. */
  readonly code?: string;
}

export class MeteredStore extends StoreDecorator {
  readonly counters: StoreCounters = { requests: 0, bytesDown: 0, bytesUp: 0 };
  /** Requests by operation. */
  readonly byOp = new Map<StoreOp, number>();
  /** Since when (clock ms) every request failed without an answer from Azure; null while it answers. */
  unreachableSince: number | null = null;

  constructor(
    inner: BlobStore,
    private readonly observe: (r: RequestEnd) => void = () => undefined,
    private readonly clock: Clock = systemClock,
  ) {
    super(inner);
  }

  protected async around<T>(op: StoreOp, _target: Target, call: () => Promise<T>): Promise<T> {
    this.counters.requests++;
    this.byOp.set(op, (this.byOp.get(op) ?? 0) + 1);
    const started = performance.now();
    const seconds = (): number => (performance.now() - started) / 1000;
    try {
      const value = await call();
      this.unreachableSince = null;
      this.observe({ op, seconds: seconds(), outcome: 'ok' });
      return value;
    } catch (e) {
      const { status, code } = azureCode(e);
      const kind = isBlobdiskError(e) ? e.kind : 'failed';
      // No status: no answer at all (refused, reset, timed out). Any answer, even a 5xx, is Azure there.
      if (kind === 'unavailable' && status === undefined) this.unreachableSince ??= this.clock.now();
      else if (status !== undefined) this.unreachableSince = null;
      const answered = status !== undefined ? `${status}${code !== undefined ? ` ${code}` : ''}` : undefined;
      this.observe({ op, seconds: seconds(), outcome: kind, ...(answered !== undefined ? { code: answered } : {}) });
      throw e;
    }
  }

  override async read(ref: BlobRef, offset: number, length: number, options?: ReadOptions): Promise<ReadBody> {
    const body = await super.read(ref, offset, length, options);
    const counters = this.counters;
    const inner = body.direct;
    const direct: DirectRead | undefined = inner && {
      pull: async (into, at, want, progress) => {
        const n = await inner.pull(into, at, want, progress);
        counters.bytesDown += n;
        return n;
      },
      cancel: () => inner.cancel(),
    };
    return {
      ...(direct ? { direct } : {}),
      async *[Symbol.asyncIterator](): AsyncGenerator<Buffer> {
        for await (const chunk of body) {
          counters.bytesDown += chunk.length;
          yield chunk;
        }
      },
    };
  }

  override putPages(ref: BlobRef, offset: number, data: Buffer, conditions?: WriteConditions): Promise<string> {
    this.counters.bytesUp += data.length;
    return super.putPages(ref, offset, data, conditions);
  }

  override stageBlock(ref: BlobRef, blockId: string, data: Buffer, conditions?: WriteConditions): Promise<void> {
    this.counters.bytesUp += data.length;
    return super.stageBlock(ref, blockId, data, conditions);
  }
}
