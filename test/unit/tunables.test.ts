/* The tunables' defaults are what the layers ran with as module constants; a change of
 * one is a decision, made here on purpose. */

import { DEFAULT_TUNABLES } from '../../lib/tunables';

test('default tunables are pinned', () => {
  expect(DEFAULT_TUNABLES).toEqual({
    leaseSeconds: 60,
    flushPollMs: 50,
    heldRetryMs: 100,
    maxAgeFactor: 10,
    minMaxAgeMs: 5_000,
    minBackoffMs: 500,
    maxBackoffMs: 30_000,
    uploadWindowBytes: 4 * 1024 * 1024,
    roomPollMs: 50,
    touchFlushMs: 5_000,
    maxOpenFiles: 128,
    maxReadFiles: 1024,
    foldMs: 1_000,
    foldRecords: 4_096,
    sequentialSlackBytes: 1024 * 1024,
    pageWindowGrains: 256,
    staleAnswerMs: 1_000,
    failFastMs: 1_000,
    silentAfterMs: 5_000,
  });
  expect(Object.isFrozen(DEFAULT_TUNABLES)).toBe(true);
});
