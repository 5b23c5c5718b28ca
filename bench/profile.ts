/* Summary of a V8 .cpuprofile (node --cpu-prof of the mount child): self time per
 * function and per area of the code, so a slow case shows where the mount's one event
 * loop spends its time. */

import fsp from 'node:fs/promises';
import path from 'node:path';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  samples: number[];
  timeDeltas: number[];
}

/** A span of the monotonic clock in µs (process.hrtime.bigint() / 1000 in any process:
 *  V8 stamps profile samples with the same clock). */
export interface ProfileWindow {
  readonly fromUs: number;
  readonly toUs: number;
}

export interface ProfileEntry {
  readonly name: string;
  readonly ms: number;
  readonly percent: number;
}

export interface ProfileSummary {
  readonly file: string;
  readonly totalMs: number;
  readonly byArea: ProfileEntry[];
  readonly topFunctions: ProfileEntry[];
  /** blobdisk's own functions with the time spent in them and everything they call. */
  readonly blobdiskInclusive: ProfileEntry[];
}

/** Where a function lives, coarsely: our layers, the big dependencies, Node itself. */
function areaOf(url: string, fn: string): string {
  if (url === '') return fn.startsWith('(') ? fn : '(native)';
  const lib = /\/dist\/lib\/([^/]+)\//.exec(url) ?? /\/dist\/lib\/([^/]+)\.js/.exec(url);
  if (lib?.[1] !== undefined) return `blobdisk lib/${lib[1]}`;
  const mod = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (mod?.[1] !== undefined) return mod[1];
  if (url.startsWith('node:')) return `node:${url.slice(5).split('/')[0] ?? ''}`;
  return path.basename(url);
}

function shortUrl(url: string): string {
  const i = url.lastIndexOf('node_modules/');
  if (i >= 0) return url.slice(i + 'node_modules/'.length);
  const d = url.indexOf('/dist/');
  if (d >= 0) return url.slice(d + 1);
  return url;
}

function entries(times: Map<string, number>, total: number, limit: number): ProfileEntry[] {
  return [...times.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, limit)
    .map(([name, us]) => ({ name, ms: Math.round(us / 1000), percent: Math.round((1000 * us) / total) / 10 }));
}

/** Self and inclusive times of a profile; with `window`, only of the samples taken in it
 *  (one phase of a mount's life, e.g. the writes and not the drain after them). */
export async function summarizeProfile(file: string, limit = 15, window?: ProfileWindow): Promise<ProfileSummary> {
  const profile = JSON.parse(await fsp.readFile(file, 'utf8')) as CpuProfile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  let total = 0;
  let at = profile.startTime;
  const inWindow = profile.timeDeltas.map((dt) => {
    at += dt;
    return window === undefined || (at >= window.fromUs && at < window.toUs);
  });
  profile.samples.forEach((id, i) => {
    if (!inWindow[i]) return;
    const dt = profile.timeDeltas[i] ?? 0;
    self.set(id, (self.get(id) ?? 0) + dt);
    total += dt;
  });
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const keyOf = (node: ProfileNode): string => {
    const { functionName, url, lineNumber } = node.callFrame;
    const fn = functionName || '(anonymous)';
    return url ? `${fn} ${shortUrl(url)}:${lineNumber + 1}` : fn;
  };
  const inclusive = new Map<string, number>();
  profile.samples.forEach((id, i) => {
    if (!inWindow[i]) return;
    const dt = profile.timeDeltas[i] ?? 0;
    const seen = new Set<string>();
    for (let at: number | undefined = id; at !== undefined; at = parent.get(at)) {
      const node = byId.get(at);
      if (!node || !node.callFrame.url.includes('/dist/lib/')) continue;
      const key = keyOf(node);
      if (seen.has(key)) continue;
      seen.add(key);
      inclusive.set(key, (inclusive.get(key) ?? 0) + dt);
    }
  });
  const byFunction = new Map<string, number>();
  const byArea = new Map<string, number>();
  for (const [id, us] of self) {
    const node = byId.get(id);
    if (!node) continue;
    const { functionName, url } = node.callFrame;
    const fn = functionName || '(anonymous)';
    const key = keyOf(node);
    byFunction.set(key, (byFunction.get(key) ?? 0) + us);
    const area = areaOf(url, fn);
    byArea.set(area, (byArea.get(area) ?? 0) + us);
  }
  return { file, totalMs: Math.round(total / 1000), byArea: entries(byArea, total, limit), topFunctions: entries(byFunction, total, limit), blobdiskInclusive: entries(inclusive, total, limit) };
}

/** The newest .cpuprofile in `dir`. */
export async function newestProfile(dir: string): Promise<string | undefined> {
  const names = (await fsp.readdir(dir).catch(() => [] as string[])).filter((n) => n.endsWith('.cpuprofile'));
  let best: { file: string; mtime: number } | undefined;
  for (const n of names) {
    const file = path.join(dir, n);
    const { mtimeMs } = await fsp.stat(file);
    if (!best || mtimeMs > best.mtime) best = { file, mtime: mtimeMs };
  }
  return best?.file;
}
