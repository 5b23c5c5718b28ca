/* Logging: pino, printed as one human-readable line per event on stderr, with every
 * message passed through redact() so no secret can reach the terminal or a log file. */

import pino from 'pino';
import pretty from 'pino-pretty';
import { LogLevel } from './config';
import { redact } from './redact';

export interface Logger {
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

export function createLogger(level: LogLevel, destination: NodeJS.WritableStream = process.stderr): Logger {
  const stream = pretty({
    destination,
    sync: true,
    colorize: false,
    ignore: 'pid,hostname',
    translateTime: 'SYS:HH:MM:ss.l',
    singleLine: true,
  });
  const log = pino(
    {
      level,
      base: null,
      hooks: {
        logMethod(args, method) {
          const [first, ...rest] = args;
          return method.apply(this, [typeof first === 'string' ? redact(first) : first, ...rest] as Parameters<typeof method>);
        },
      },
    },
    stream,
  );
  return {
    debug: (m) => log.debug(m),
    info: (m) => log.info(m),
    warn: (m) => log.warn(m),
    error: (m) => log.error(m),
  };
}

/** A logger that drops everything (unit tests, benchmarks). */
export const silentLogger: Logger = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined };
