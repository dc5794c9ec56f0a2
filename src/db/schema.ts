/**
 * Drizzle schema of pg-outbox's own tables, all in the `outbox` schema. drizzle-kit generates
 * the table DDL in `drizzle/` from this file; functions, triggers and views live in `sql/` and
 * reach `drizzle/` as custom migrations (`npm run db:sql-migration`).
 *
 * Tables are private (prefixed `_`): users read the public views (`outbox.events`,
 * `outbox.captures`) and call the public functions.
 */
import { sql } from "drizzle-orm";
import {
  bigint,
  customType,
  index,
  integer,
  json,
  jsonb,
  pgSchema,
  text,
  timestamp,
} from "drizzle-orm/pg-core";

/** The `outbox` schema that holds every object of pg-outbox. */
export const outboxSchema = pgSchema("outbox");

/** `xid8`: a 64-bit transaction id, epoch-extended so it never wraps. */
const xid8 = customType<{ data: string; driverData: string }>({ dataType: () => "xid8" });
/** `regclass`: dumps and restores by name, so a capture survives pg_dump/pg_restore. */
const regclass = customType<{ data: string; driverData: string }>({ dataType: () => "regclass" });
/** `int2[]` attribute numbers: they survive column renames, names do not. */
const attnums = customType<{ data: number[]; driverData: string }>({ dataType: () => "int2[]" });

/**
 * One row per captured table. Columns are kept as attribute numbers so that renaming a column
 * keeps its meaning (an excluded `password` renamed to `pw` stays excluded).
 */
export const captures = outboxSchema.table("_captures", {
  target: regclass("target").primaryKey(),
  operations: text("operations").array().notNull(),
  columnAttnums: attnums("column_attnums"),
  excludeAttnums: attnums("exclude_attnums"),
  tenantAttnum: integer("tenant_attnum"),
  bypassedStatements: bigint("bypassed_statements", { mode: "number" }).notNull().default(0),
  lastBypassedAt: timestamp("last_bypassed_at", { withTimezone: true }),
  createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
  updatedAt: timestamp("updated_at", { withTimezone: true }).notNull().defaultNow(),
});

/**
 * The raw facts written on the write path: one row per statement (chunked), holding the row
 * images of every changed row as one JSON array. Writing one row per statement instead of one
 * per changed row is what keeps bulk statements cheap; `outbox.events` expands the array and
 * assembles the envelope on read. Event positions are `id << 16 | index`.
 */
export const events = outboxSchema.table(
  "_events",
  {
    id: bigint("id", { mode: "bigint" }).primaryKey().generatedAlwaysAsIdentity(),
    xid: xid8("xid").notNull().default(sql`pg_current_xact_id()`),
    createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
    op: text("op").notNull(),
    schemaName: text("schema_name"),
    tableName: text("table_name"),
    topic: text("topic"),
    keyColumns: text("key_columns").array(),
    emitKey: text("emit_key"),
    tenantColumn: text("tenant_column"),
    context: jsonb("context"),
    count: integer("count").notNull(),
    rows: json("rows").notNull(),
  },
  (t) => [index("_events_xid_idx").on(t.xid)],
);
