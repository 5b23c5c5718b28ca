/* The Azure side of the benchmark: writing the test page blob, and the SDK baseline, a
 * parallel download of the whole blob with @azure/storage-blob straight into memory. */

import { BlobServiceClient } from '@azure/storage-blob';
import { MB } from './lib';

/** Largest Put Page Azure accepts. */
const PUT_PAGE_BYTES = 4 * 1024 * 1024;

function client(connectionString: string): BlobServiceClient {
  return BlobServiceClient.fromConnectionString(connectionString, { keepAliveOptions: { enable: true } });
}

/** Creates container/name as a page blob holding exactly `data` (every page written). */
export async function writePageBlob(connectionString: string, container: string, name: string, data: Buffer): Promise<void> {
  const containerClient = client(connectionString).getContainerClient(container);
  await containerClient.createIfNotExists();
  const blob = containerClient.getPageBlobClient(name);
  await blob.create(data.length);
  const offsets: number[] = [];
  for (let at = 0; at < data.length; at += PUT_PAGE_BYTES) offsets.push(at);
  const worker = async (): Promise<void> => {
    for (let at = offsets.shift(); at !== undefined; at = offsets.shift()) {
      const n = Math.min(PUT_PAGE_BYTES, data.length - at);
      await blob.uploadPages(data.subarray(at, at + n), at, n);
    }
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
}

export interface DownloadResult {
  readonly seconds: number;
  readonly mbps: number;
  readonly data: Buffer;
}

/** downloadToBuffer of the whole blob with `concurrency` ranged GETs of `blockSize` in flight,
 *  into a buffer allocated before the clock starts. A fresh client, as a new mount has. */
export async function sdkDownload(connectionString: string, container: string, name: string, size: number, blockSize: number, concurrency: number): Promise<DownloadResult> {
  const blob = client(connectionString).getContainerClient(container).getBlobClient(name);
  const data = Buffer.alloc(size);
  const started = process.hrtime.bigint();
  await blob.downloadToBuffer(data, 0, size, { blockSize, concurrency });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return { seconds, mbps: size / MB / seconds, data };
}
