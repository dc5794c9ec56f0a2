import { pino, type Logger } from "pino";

/** pino's logger type, re-exported so users need no direct pino import. */
export type { Logger } from "pino";

/** Options of {@link createLogger}. */
export interface LoggerOptions {
  /** Minimum level; default `info`. */
  level?: string;
  /** Human-readable output (pino-pretty); default: when stdout is a terminal. */
  pretty?: boolean;
}

/**
 * The root logger of a pg-outbox process: JSON lines for log collectors, pretty in a terminal.
 * Components take a child with `component` set (`logger.child({ component: "capture" })`).
 */
export function createLogger(options: LoggerOptions = {}): Logger {
  const pretty = options.pretty ?? Boolean(process.stdout.isTTY);
  return pino({
    level: options.level ?? "info",
    base: { name: "pg-outbox" },
    redact: { paths: ["*.password", "*.secret", "*.connectionString", "*.url"], censor: "***" },
    ...(pretty ? { transport: { target: "pino-pretty", options: { colorize: true, ignore: "pid,hostname,name" } } } : {}),
  });
}

/** A logger that drops everything; the library default when the app passes none. */
export function silentLogger(): Logger {
  return pino({ level: "silent" });
}
