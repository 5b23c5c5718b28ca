/* Which bytes of a page blob hold pages, learnt lazily by window: a miss asks Azure for
 * the page ranges of its window only, because listing every range of a big, fragmented
 * blob is slow (Azurite never merges ranges). Ranges known empty read as zeros with no
 * request. A full listing (for st_blocks) fills every window at once. */

import { isKind } from '../errors';
import { systemClock, type Clock } from '../clock';
import { BlobRef, BlobStore, ByteRange } from '../store/types';

export class PageMap {
  private readonly windows = new Map<number, ByteRange[]>();
  private readonly loading = new Map<number, Promise<ByteRange[]>>();
  /** Bumped by every change we make to the blob's pages (per window, and in all): a
   *  listing asked for before a change landed may not show it, so its answer is not kept. */
  private generation = 0;
  private readonly windowGenerations = new Map<number, number>();
  private resets = 0;

  constructor(
    private readonly store: BlobStore,
    private readonly ref: BlobRef,
    private readonly windowBytes: number,
    private etag: string,
    private size: number,
    /** Whether requests should carry If-Match (not while we hold the lease: changes are ours). */
    private readonly conditional: () => boolean,
    /** A listing that failed because Azure did not answer stays the answer this long (the
     *  kernel reads a page again at once when its read-ahead failed). */
    private readonly failFast: { readonly clock: Clock; readonly ms: number; readonly silentAfterMs: number } = { clock: systemClock, ms: 0, silentAfterMs: 0 },
  ) {}

  private condition(etag: string): { etag?: string } {
    return this.conditional() ? { etag } : {};
  }

  /** Forgets everything (the blob changed). */
  reset(etag: string, size: number): void {
    this.windows.clear();
    this.loading.clear();
    this.windowGenerations.clear();
    this.generation++;
    this.resets++;
    this.etag = etag;
    this.size = size;
  }

  /** One of our Put Page or Clear Pages calls changed [start, end): what was known of the
   *  windows it touches is forgotten, and listings under way are not kept. Called as the
   *  call returns, before the grains it carried may leave the cache. */
  changed(start: number, end: number): void {
    this.generation++;
    for (let w = Math.floor(start / this.windowBytes); w * this.windowBytes < end; w++) {
      this.windowGenerations.set(w, (this.windowGenerations.get(w) ?? 0) + 1);
      this.windows.delete(w);
      this.loading.delete(w);
    }
  }

  /** Allocated ranges intersecting [start, end), clipped to it; undefined when not known without a request. */
  known(start: number, end: number): ByteRange[] | undefined {
    const out: ByteRange[] = [];
    for (let w = Math.floor(start / this.windowBytes); w * this.windowBytes < end; w++) {
      const ranges = this.windows.get(w);
      if (!ranges) return undefined;
      for (const r of ranges) if (r.end > start && r.start < end) out.push({ start: Math.max(r.start, start), end: Math.min(r.end, end) });
    }
    return out;
  }

  /** Allocated ranges intersecting [start, end), listing the windows not yet known. */
  async ranges(start: number, end: number): Promise<ByteRange[]> {
    for (;;) {
      const known = this.known(start, end);
      if (known) return known;
      const loads: Promise<ByteRange[]>[] = [];
      for (let w = Math.floor(start / this.windowBytes); w * this.windowBytes < end; w++) loads.push(this.load(w));
      await Promise.all(loads);
      // Unknown still: a change of ours landed while listing; ask again.
    }
  }

  private load(w: number): Promise<ByteRange[]> {
    const have = this.windows.get(w);
    if (have) return Promise.resolve(have);
    let loading = this.loading.get(w);
    if (!loading) {
      const start = w * this.windowBytes;
      const end = Math.min(this.size, start + this.windowBytes);
      const etag = this.etag;
      const resets = this.resets;
      const generation = this.windowGenerations.get(w) ?? 0;
      const askedAt = this.failFast.clock.now();
      const current = this.store.pageRanges(this.ref, start, end, this.condition(etag)).then(
        (ranges) => {
          if (this.resets === resets && (this.windowGenerations.get(w) ?? 0) === generation) this.windows.set(w, ranges);
          if (this.loading.get(w) === current) this.loading.delete(w);
          return ranges;
        },
        (e: unknown) => {
          const forget = (): void => {
            if (this.loading.get(w) === current) this.loading.delete(w);
          };
          const silent = this.failFast.clock.now() - askedAt >= this.failFast.silentAfterMs;
          if (isKind(e, 'unavailable') && silent && this.failFast.ms > 0) this.failFast.clock.timeout(forget, this.failFast.ms);
          else forget();
          throw e;
        },
      );
      loading = current;
      this.loading.set(w, loading);
    }
    return loading;
  }

  /** Lists the whole blob once and returns the allocated byte count. */
  async allocatedBytes(): Promise<number> {
    const etag = this.etag;
    const generation = this.generation;
    const all = await this.store.pageRanges(this.ref, 0, this.size, this.condition(etag));
    if (this.generation === generation) {
      for (let w = 0; w * this.windowBytes < this.size; w++) this.windows.set(w, []);
      for (const r of all) {
        for (let w = Math.floor(r.start / this.windowBytes); w * this.windowBytes < r.end; w++) {
          const start = w * this.windowBytes;
          this.windows.get(w)?.push({ start: Math.max(r.start, start), end: Math.min(r.end, start + this.windowBytes) });
        }
      }
    }
    return all.reduce((sum, r) => sum + (r.end - r.start), 0);
  }
}
