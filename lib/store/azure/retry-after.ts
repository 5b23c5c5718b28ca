/* Honouring Retry-After. The SDK's retry policy ignores it: after a 503 ServerBusy that asked
 * for a second, its retries came 4 to 260 ms later, adding load where Azure asked for less.
 * This policy sits inside the retry loop (one run per try): when an answer of 500 or 503
 * carries Retry-After, it waits that long before handing the answer to the retry policy,
 * which then retries after its own short delay. The wait ends early when the request is
 * aborted (our --io-timeout deadline), so it never stretches a call past that bound. */

import type { Pipeline as CorePipeline, PipelinePolicy, PipelineRequest, PipelineResponse, SendRequest } from '@azure/core-rest-pipeline';
import type { Pipeline } from '@azure/storage-blob';

export const RETRY_AFTER_POLICY = 'blobdiskRetryAfter';
/** A Retry-After longer than this is waited this long only (the deadline usually ends it first). */
export const MAX_RETRY_AFTER_MS = 60_000;

/** Retry-After as milliseconds from `now`: delta-seconds or an HTTP date; undefined when absent or unreadable. */
export function retryAfterMs(value: string | undefined, now: number = Date.now()): number | undefined {
  if (value === undefined || value.trim() === '') return undefined;
  const text = value.trim();
  if (/^\d+(\.\d+)?$/.test(text)) return Math.min(MAX_RETRY_AFTER_MS, Math.round(Number(text) * 1000));
  const at = Date.parse(text);
  return Number.isNaN(at) ? undefined : Math.min(MAX_RETRY_AFTER_MS, Math.max(0, at - now));
}

function wait(ms: number, signal: PipelineRequest['abortSignal']): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}

export function retryAfterPolicy(): PipelinePolicy {
  return {
    name: RETRY_AFTER_POLICY,
    async sendRequest(request: PipelineRequest, next: SendRequest): Promise<PipelineResponse> {
      const response = await next(request);
      if (response.status === 503 || response.status === 500) {
        const ms = retryAfterMs(response.headers.get('retry-after'));
        if (ms !== undefined && ms > 0) await wait(ms, request.abortSignal);
      }
      return response;
    },
  };
}

/** Adds the policy to the core pipeline behind `pipeline`, inside the retry loop. The storage
 *  SDK builds that pipeline once, when the first client is made on `pipeline`, and every
 *  client made from that one shares it; it offers no option to add a policy there, so this
 *  reaches its cached pipeline, and fails loudly if a new SDK version no longer has it. */
export function addRetryAfter(pipeline: Pipeline): void {
  corePipeline(pipeline, 'Retry-After').addPolicy(retryAfterPolicy(), { afterPhase: 'Retry' });
}

/** The core pipeline behind `pipeline` (see addRetryAfter), for adding `what`'s policy. */
export function corePipeline(pipeline: Pipeline, what: string): CorePipeline {
  const core = (pipeline as unknown as { _corePipeline?: CorePipeline })._corePipeline;
  if (core === undefined || typeof core.addPolicy !== 'function') throw new Error(`the storage SDK has no core pipeline to add the ${what} policy to`);
  return core;
}
