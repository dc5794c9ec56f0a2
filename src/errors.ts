/**
 * Every error pg-outbox throws is an {@link OutboxError}: a message that says what was wrong
 * and how to fix it, a stable `code`, and the original error as `cause`. Messages never carry
 * connection passwords or webhook secrets.
 */

/** Stable error codes, for programs that branch on errors. */
export type OutboxErrorCode =
  | "config_invalid"
  | "database_unreachable"
  | "migration_failed"
  | "invalid_input"
  | "not_found"
  | "database_error"
  | "address_refused";

/** Base class of all errors thrown by pg-outbox. */
export class OutboxError extends Error {
  /** Stable machine-readable code. */
  readonly code: OutboxErrorCode;
  /** SQLSTATE of the underlying PostgreSQL error, when there is one. */
  readonly sqlState: string | undefined;

  constructor(code: OutboxErrorCode, message: string, options?: { cause?: unknown; sqlState?: string }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = "OutboxError";
    this.code = code;
    this.sqlState = options?.sqlState;
  }
}

/** Configuration that does not validate; the message lists each bad option. */
export class ConfigError extends OutboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("config_invalid", message, options);
    this.name = "ConfigError";
  }
}

/**
 * A webhook's host is, or resolves to, an address the worker's address policy refuses
 * (link-local, cloud metadata, or private when private networks are not allowed). The
 * delivery goes `dead` with this message.
 */
export class AddressRefusedError extends OutboxError {
  constructor(message: string) {
    super("address_refused", message);
    this.name = "AddressRefusedError";
  }
}

/**
 * A query got no answer in time. After its connection is cut, postgres.js can leave a query
 * that never settles; the worker gives up on it (and, where it owns the connection, replaces
 * the connection) instead of waiting forever.
 */
export class NoAnswerError extends OutboxError {
  constructor(ms: number) {
    super("database_unreachable", `no answer from PostgreSQL within ${ms} ms; the query is abandoned and tried again`);
    this.name = "NoAnswerError";
  }
}

/** SQLSTATE classes and codes pg-outbox reacts to. */
const connectionClasses = new Set(["08", "57", "53"]);
const inputStates = new Set(["22023", "22004", "42703", "42809", "42P01", "55000", "22P02", "23514", "23505", "42704"]);

/** The SQLSTATE of a PostgreSQL error thrown by postgres.js or pg, if any. */
export function sqlStateOf(error: unknown): string | undefined {
  if (typeof error === "object" && error !== null && "code" in error) {
    const code = (error as { code: unknown }).code;
    if (typeof code === "string" && /^[0-9A-Z]{5}$/.test(code)) return code;
  }
  return undefined;
}

/** Whether an error means the connection or server went away (worth retrying later). */
export function isConnectionError(error: unknown): boolean {
  const state = sqlStateOf(error);
  if (state) return connectionClasses.has(state.slice(0, 2)) && state !== "57014";
  const code = typeof error === "object" && error !== null ? (error as { code?: unknown }).code : undefined;
  return typeof code === "string" && /^(ECONNREFUSED|ECONNRESET|ETIMEDOUT|EPIPE|ENOTFOUND|CONNECTION_)/.test(code);
}

/**
 * Wraps a database error into an {@link OutboxError}: bad input (unknown column, invalid
 * topic, not a table, …) keeps PostgreSQL's message and hint, which pg-outbox's SQL writes to
 * say what is wrong and how to fix it.
 */
export function wrapDatabaseError(error: unknown, doing: string): OutboxError {
  if (error instanceof OutboxError) return error;
  const state = sqlStateOf(error);
  const pgMessage = error instanceof Error ? error.message : String(error);
  const hint =
    typeof error === "object" && error !== null && "hint" in error && typeof (error as { hint: unknown }).hint === "string"
      ? ` (${(error as { hint: string }).hint})`
      : "";
  if (isConnectionError(error)) {
    return new OutboxError("database_unreachable", `${doing}: cannot reach PostgreSQL: ${pgMessage}`, {
      cause: error,
      ...(state ? { sqlState: state } : {}),
    });
  }
  // P0002 (no_data_found) is what pg-outbox's functions raise for an unknown name or id.
  const code = state === "P0002" ? "not_found" : state && inputStates.has(state) ? "invalid_input" : "database_error";
  return new OutboxError(code, `${doing}: ${pgMessage}${hint}`, { cause: error, ...(state ? { sqlState: state } : {}) });
}
