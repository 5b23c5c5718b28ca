/* A cold boot-style read trace, run as a child of the peers benchmark against a file in a
 * mount: `count` random reads of 4–64 KiB (4 KiB aligned) scattered over the first
 * `span` bytes, drawn from a seeded generator so every column replays the same trace, then
 * a sequential stretch of `seq` bytes in 1 MiB reads from `seqAt`. Prints the times in ms
 * as JSON on stdout.
 *
 *   node dist/bench/trace.js <file> <seed> <count> <span> <seqAt> <seq> */

import fs from 'node:fs';

const KiB = 1024;

function main(argv: string[]): void {
  const [file, seed, count, span, seqAt, seq] = argv;
  if (file === undefined || seq === undefined) throw new Error('usage: trace <file> <seed> <count> <span> <seqAt> <seq>');
  let state = Number(seed) >>> 0 || 1;
  const next = (): number => {
    // xorshift32: the same sequence for every column and run.
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state / 2 ** 32;
  };
  const buf = Buffer.alloc(1024 * KiB);
  const fd = fs.openSync(file, 'r');
  const started = process.hrtime.bigint();
  for (let i = 0; i < Number(count); i++) {
    const len = (1 + Math.floor(next() * 16)) * 4 * KiB;
    const at = Math.floor(next() * ((Number(span) - len) / (4 * KiB))) * 4 * KiB;
    fs.readSync(fd, buf, 0, len, at);
  }
  const randomDone = process.hrtime.bigint();
  for (let at = Number(seqAt); at < Number(seqAt) + Number(seq); at += buf.length) fs.readSync(fd, buf, 0, buf.length, at);
  const done = process.hrtime.bigint();
  fs.closeSync(fd);
  process.stdout.write(`${JSON.stringify({ randomMs: Number(randomDone - started) / 1e6, seqMs: Number(done - randomDone) / 1e6, totalMs: Number(done - started) / 1e6 })}\n`);
}

main(process.argv.slice(2));
