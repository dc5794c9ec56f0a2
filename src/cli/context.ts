import { cliEnvSchema, describeIssues, type CliEnv } from "../config.js";
import { ConfigError, OutboxError } from "../errors.js";
import { createLogger, type Logger } from "../logger.js";
import { createOutbox, type Outbox } from "../outbox.js";

/** Exit codes of the `outbox` command, stable for scripts. */
export const exitCodes = {
  ok: 0,
  /** Something failed at run time (database error, unhealthy status). */
  failure: 1,
  /** Bad usage: unknown command or option, invalid argument. */
  usage: 2,
  /** Bad configuration (environment). */
  config: 3,
  /** The database cannot be reached. */
  unreachable: 4,
} as const;

/** Reads and validates the environment once; one clear line on error. */
export function readEnv(env: NodeJS.ProcessEnv = process.env): CliEnv {
  const result = cliEnvSchema.safeParse(env);
  if (!result.success) throw new ConfigError(`invalid environment: ${describeIssues(result.error)}`);
  return result.data;
}

/** The database URL a command needs; commands other than `demo` do not start a server. */
export function requireDatabaseUrl(env: CliEnv): string {
  if (!env.DATABASE_URL) {
    throw new ConfigError("DATABASE_URL is not set: export DATABASE_URL=postgres://user:password@host:5432/database");
  }
  return env.DATABASE_URL;
}

/** Logger for a command: pretty in a terminal, JSON lines otherwise. */
export function commandLogger(env: CliEnv): Logger {
  return createLogger({ level: env.OUTBOX_LOG_LEVEL });
}

/** Prints an error as one line (no stack) and returns the exit code for it. */
export function reportError(error: unknown): number {
  if (error instanceof ConfigError) {
    console.error(`outbox: ${error.message}`);
    return exitCodes.config;
  }
  if (error instanceof OutboxError) {
    console.error(`outbox: ${error.message}`);
    return error.code === "database_unreachable" ? exitCodes.unreachable : error.code === "invalid_input" ? exitCodes.usage : exitCodes.failure;
  }
  console.error(`outbox: ${error instanceof Error ? error.message : String(error)}`);
  return exitCodes.failure;
}

/** Runs `fn` with an Outbox on DATABASE_URL and closes it. */
export async function withOutbox<T>(fn: (outbox: Outbox) => Promise<T>): Promise<T> {
  const outbox = createOutbox({ connectionString: requireDatabaseUrl(readEnv()) });
  try {
    return await fn(outbox);
  } finally {
    await outbox.close();
  }
}

/** Prints `value` as JSON with `--json`, else the text `text()` returns. */
export function print(value: unknown, json: boolean, text: () => string): void {
  console.log(json ? JSON.stringify(value, null, 2) : text());
}

/** Bad command-line input that commander cannot check itself (exit code 2). */
export function usageError(message: string): OutboxError {
  return new OutboxError("invalid_input", message);
}
