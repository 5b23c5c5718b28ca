/* Counters of one image's traffic. The mount sums them for `status`; tests read them to
 * prove that a hit makes no request. Plain numbers: they are bumped on the read path. */

export interface ImageCounters {
  /** Grain reads served from the cache directory. */
  hits: number;
  /** Grain reads that had to wait for a fetch. */
  misses: number;
  /** Grain reads answered with zeros because no page holds them (no request). */
  zeroReads: number;
  /** Bytes returned to readers. */
  bytesRead: number;
  /** Ranged GETs issued, and how many of them were read-ahead. */
  fetches: number;
  readAheadFetches: number;
  /** Bytes received from Azure for this image. */
  bytesDown: number;
  /** Bytes sent to Azure (Put Page, Put Block), and Clear Pages bytes (sent as no data). */
  bytesUp: number;
  bytesCleared: number;
  /** Upload requests (Put Page, Clear Pages, Put Block, Put Block List, resizes). */
  uploads: number;
}

export function newImageCounters(): ImageCounters {
  return { hits: 0, misses: 0, zeroReads: 0, bytesRead: 0, fetches: 0, readAheadFetches: 0, bytesDown: 0, bytesUp: 0, bytesCleared: 0, uploads: 0 };
}

export function addCounters(into: ImageCounters, from: ImageCounters): ImageCounters {
  for (const key of Object.keys(into) as (keyof ImageCounters)[]) into[key] += from[key];
  return into;
}
