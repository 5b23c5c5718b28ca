/* MeteredStore: counts what goes through a store (requests, bytes down and up) for
 * `blobdisk status` and for tests that prove a hit makes no request. A request is one
 * store operation, counted when it starts; bytes down when a read's body yields them,
 * bytes up when a Put Page or Put Block starts. */

import { StoreDecorator, type StoreOp, type Target } from './decorator';
import type { BlobRef, ReadOptions, StoreCounters, WriteConditions } from './types';

export class MeteredStore extends StoreDecorator {
  readonly counters: StoreCounters = { requests: 0, bytesDown: 0, bytesUp: 0 };
  /** Requests by operation. */
  readonly byOp = new Map<StoreOp, number>();

  protected around<T>(op: StoreOp, _target: Target, call: () => Promise<T>): Promise<T> {
    this.counters.requests++;
    this.byOp.set(op, (this.byOp.get(op) ?? 0) + 1);
    return call();
  }

  override async read(ref: BlobRef, offset: number, length: number, options?: ReadOptions): Promise<AsyncIterable<Buffer>> {
    const body = await super.read(ref, offset, length, options);
    const counters = this.counters;
    return (async function* counted(): AsyncGenerator<Buffer> {
      for await (const chunk of body) {
        counters.bytesDown += chunk.length;
        yield chunk;
      }
    })();
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
