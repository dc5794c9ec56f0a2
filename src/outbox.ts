import postgres, { type Sql } from "postgres";
import { z } from "zod";
import { connectionStringSchema, describeIssues } from "./config.js";
import { captureDisable, captureEnable, captureList, type CaptureOptions, type CaptureRow } from "./db/captures.js";
import { eventEmit, eventListAfter, type EventRow, type Queryable } from "./db/events.js";
import { migrate } from "./db/migrate.js";
import { ConfigError } from "./errors.js";
import { silentLogger, type Logger } from "./logger.js";

const optionsSchema = z
  .object({
    connectionString: connectionStringSchema.optional(),
    sql: z.custom<Sql>((value) => typeof value === "function", "must be a postgres.js client").optional(),
    maxConnections: z.number().int().min(2).max(1000).default(10),
    logger: z.custom<Logger>((value) => typeof value === "object" && value !== null && "child" in value).optional(),
  })
  .refine((o) => Boolean(o.connectionString) !== Boolean(o.sql), {
    message: "give exactly one of connectionString or sql",
  });

/** Options of {@link createOutbox}. */
export interface OutboxOptions {
  /** Connection string of the database; give this or `sql`. */
  connectionString?: string;
  /** An existing postgres.js client to share; give this or `connectionString`. It is not closed by `close()`. */
  sql?: Sql;
  /** Pool size when pg-outbox opens its own client; default 10, at least 2 (migrate holds a lock on one). */
  maxConnections?: number;
  /** pino logger; default silent. */
  logger?: Logger;
}

/** The pg-outbox API on one database. */
export interface Outbox {
  /** The postgres.js client in use. */
  readonly sql: Sql;
  /** Brings the `outbox` schema up to date; safe to run concurrently, idempotent. */
  migrate(): Promise<void>;
  /** Captures INSERT/UPDATE/DELETE of `table` as events (`outbox.enable_capture`). */
  enableCapture(table: string, options?: CaptureOptions): Promise<void>;
  /** Stops capturing `table`; events already written stay. */
  disableCapture(table: string): Promise<void>;
  /** Captured tables with their options and health. */
  captures(): Promise<CaptureRow[]>;
  /**
   * Writes an app event in `client`'s transaction (pass the transaction to make the event
   * atomic with your writes; pass `outbox.sql` for a standalone event). Returns its id.
   */
  emit(client: Queryable, topic: string, data: unknown, options?: { key?: string }): Promise<string>;
  /** Committed events after a position (default the beginning), oldest first. */
  events(options?: { after?: string; limit?: number }): Promise<EventRow[]>;
  /** Closes the client if pg-outbox opened it. */
  close(): Promise<void>;
}

/** Creates the pg-outbox API on a database. Options are validated: a bad one throws a {@link ConfigError}. */
export function createOutbox(options: OutboxOptions): Outbox {
  const parsed = optionsSchema.safeParse(options);
  if (!parsed.success) throw new ConfigError(`invalid createOutbox options: ${describeIssues(parsed.error)}`);
  const config = parsed.data;
  const logger = (config.logger ?? silentLogger()).child({ component: "outbox" });
  const owned = !config.sql;
  const sql: Sql =
    config.sql ??
    postgres(config.connectionString!, {
      max: config.maxConnections,
      onnotice: (notice) => logger.debug({ notice: notice.message }, "postgres notice"),
    });
  return {
    sql,
    migrate: () => migrate(sql),
    enableCapture: (table, captureOptions) => captureEnable(sql, table, captureOptions),
    disableCapture: (table) => captureDisable(sql, table),
    captures: () => captureList(sql),
    emit: (client, topic, data, emitOptions) => eventEmit(client, topic, data, emitOptions?.key),
    events: (listOptions) => eventListAfter(sql, listOptions?.after ?? "-1", listOptions?.limit ?? 100),
    async close() {
      if (owned) await sql.end({ timeout: 5 });
    },
  };
}
