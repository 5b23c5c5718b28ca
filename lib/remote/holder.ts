/* Who holds an image's lease, for the EBUSY a second host gets: the holder writes its host
 * name, mountpoint and the time it took the lease into the blob's metadata, under the lease
 * and in the same request that tells it the blob's new ETag (Set Blob Metadata answers it).
 * It is left there at release: a blob that is not leased shows it as "(lease free)", so
 * releasing costs no extra request and does not move the ETag a handoff file records. */

import fsp from 'node:fs/promises';
import os from 'node:os';
import { isBlobdiskError } from '../errors';
import type { BlobInfo, BlobRef, BlobStore } from '../store/types';

/** Metadata key of the lease holder ("host=… mount=… since=…Z"). */
export const HOLDER_KEY = 'blobdisk_holder';

/** This mount, as the holder metadata names it. */
export interface HolderIdentity {
  readonly host: string;
  readonly mountpoint: string;
}

/** Metadata values are HTTP header values: printable ASCII only, bounded. */
function printable(text: string): string {
  return text.replace(/[^\x20-\x7e]/g, '?').slice(0, 400);
}

export function holderText(who: HolderIdentity, since: Date): string {
  return printable(`host=${who.host} mount=${who.mountpoint} since=${since.toISOString().replace(/\.\d+Z$/, 'Z')}`);
}

/** Writes the holder into the metadata of `ref` under lease `leaseId`, only while the blob
 *  is still `info` (If-Match); returns what Azure then holds (the new ETag, told to `produced`). */
export async function writeHolder(store: BlobStore, ref: BlobRef, info: BlobInfo, leaseId: string, text: string, produced: (etag: string) => string): Promise<BlobInfo> {
  const metadata = { ...info.metadata, [HOLDER_KEY]: text };
  return { ...info, metadata, etag: produced(await store.setMetadata(ref, metadata, { leaseId, ifMatch: info.etag })) };
}

/** Who holds `ref`'s lease, as its metadata says: "host=… mount=… since=…", "(lease free)"
 *  when nobody leases it, "an unknown writer" when its holder wrote no name. */
export async function describeHolder(store: BlobStore, ref: BlobRef): Promise<string> {
  try {
    const info = await store.getInfo(ref);
    if (info.leased === false) return '(lease free)';
    return info.metadata[HOLDER_KEY] ?? 'an unknown writer (no blobdisk holder in its metadata)';
  } catch (e) {
    return `an unknown writer (${isBlobdiskError(e) ? e.kind : 'error'} reading its metadata)`;
  }
}

/** This machine: its machine id (systemd's, or D-Bus's) and host name. A cache directory
 *  copied to another machine makes new lease ids there. */
export async function hostIdentity(): Promise<string> {
  for (const file of ['/etc/machine-id', '/var/lib/dbus/machine-id']) {
    const id = (await fsp.readFile(file, 'utf8').catch(() => '')).trim();
    if (id !== '') return `${id}/${os.hostname()}`;
  }
  return os.hostname();
}
