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
  boolean,
  check,
  customType,
  index,
  integer,
  json,
  jsonb,
  pgSchema,
  text,
  timestamp,
  uniqueIndex,
  uuid,
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

/** `jsonpath`: a subscription's filter, evaluated like `jsonb_path_match`. */
const jsonpath = customType<{ data: string; driverData: string }>({ dataType: () => "jsonpath" });

/**
 * Subscriptions: public, written with plain SQL or migrations. A validation trigger
 * (sql/100_subscriptions.sql) refuses bad rows with a message that says what is wrong.
 */
export const subscriptions = outboxSchema.table(
  "subscriptions",
  {
    name: text("name").primaryKey(),
    pattern: text("pattern").notNull(),
    kind: text("kind").notNull(),
    config: jsonb("config").notNull().default({}),
    filter: jsonpath("filter"),
    tenant: text("tenant"),
    active: boolean("active").notNull().default(true),
    disabledReason: text("disabled_reason"),
    maxAttempts: integer("max_attempts").notNull().default(25),
    ordered: boolean("ordered").notNull().default(false),
    createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
    updatedAt: timestamp("updated_at", { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [
    check("subscriptions_name_check", sql`${t.name} ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$'`),
    check("subscriptions_kind_check", sql`${t.kind} in ('webhook', 'handler', 'notify')`),
    check("subscriptions_max_attempts_check", sql`${t.maxAttempts} between 1 and 1000`),
  ],
);

/**
 * One row per (event, subscription). `event_position` orders and finds the event;
 * `order_key` (ordered subscriptions only) is the key whose events go one at a time.
 * `locked_until` is the lease of a claimed delivery: after a crash another worker takes it
 * over when the lease ends, without waiting for anything held by the dead process.
 * `subscription` has no foreign key: triggers on subscriptions cascade deletes and renames
 * (sql/100_subscriptions.sql), without a key check on every delivery dispatch writes.
 */
export const deliveries = outboxSchema.table(
  "deliveries",
  {
    id: bigint("id", { mode: "bigint" }).primaryKey().generatedAlwaysAsIdentity(),
    eventId: uuid("event_id").notNull(),
    eventPosition: bigint("event_position", { mode: "bigint" }).notNull(),
    subscription: text("subscription").notNull(),
    status: text("status").notNull().default("pending"),
    attempts: integer("attempts").notNull().default(0),
    nextAttemptAt: timestamp("next_attempt_at", { withTimezone: true }).notNull().defaultNow(),
    lockedUntil: timestamp("locked_until", { withTimezone: true }),
    lockedBy: text("locked_by"),
    orderKey: text("order_key"),
    lastError: text("last_error"),
    lastStatus: integer("last_status"),
    deliveredAt: timestamp("delivered_at", { withTimezone: true }),
    createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
    updatedAt: timestamp("updated_at", { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [
    check("deliveries_status_check", sql`${t.status} in ('pending', 'delivering', 'retrying', 'delivered', 'dead')`),
    // A lease has an owner exactly while an attempt runs: recording an outcome finds the
    // worker's deliveries by `locked_by` alone (see _delivery_complete in sql/120).
    check("deliveries_locked_by_check", sql`(${t.status} = 'delivering') = (${t.lockedBy} is not null)`),
    uniqueIndex("deliveries_event_position_subscription_idx").on(t.eventPosition, t.subscription),
    // The claim order (due time, then event order) straight from the index: without
    // event_position here every claim sorted all of a subscription's due deliveries.
    index("deliveries_subscription_next_attempt_at_event_position_idx")
      .on(t.subscription, t.nextAttemptAt, t.eventPosition)
      .where(sql`status in ('pending', 'retrying')`),
    index("deliveries_locked_until_idx").on(t.lockedUntil).where(sql`status = 'delivering'`),
    index("deliveries_subscription_order_key_event_position_idx")
      .on(t.subscription, t.orderKey, t.eventPosition)
      .where(sql`order_key is not null and status in ('pending', 'retrying', 'delivering')`),
    // Dead deliveries are rare and kept long: a small index makes counting them cheap.
    index("deliveries_subscription_dead_idx").on(t.subscription).where(sql`status = 'dead'`),
  ],
);

/**
 * The dispatcher's read position (DESIGN.md guarantee 3): the last `_events.id` read in id
 * order, and the snapshot of that read (xmax and in-flight xids), saved in the same
 * transaction as the deliveries it wrote. One row.
 */
export const dispatchState = outboxSchema.table(
  "_dispatch_state",
  {
    id: integer("id").primaryKey().default(1),
    lastId: bigint("last_id", { mode: "bigint" }).notNull().default(sql`0`),
    snapshotXmax: xid8("snapshot_xmax"),
    snapshotXip: xid8("snapshot_xip").array().notNull().default(sql`'{}'`),
    dispatchedAt: timestamp("dispatched_at", { withTimezone: true }),
    updatedAt: timestamp("updated_at", { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [check("_dispatch_state_single_row_check", sql`${t.id} = 1`)],
);

/**
 * Worker processes and whether they are idle. The write path sends a NOTIFY only while some
 * worker's `idle_until` lies in the future: busy workers find new work by reading, and a
 * crashed idle worker stops costing writes when its mark expires.
 */
export const workers = outboxSchema.table("_workers", {
  id: text("id").primaryKey(),
  idleUntil: timestamp("idle_until", { withTimezone: true }),
  heartbeatAt: timestamp("heartbeat_at", { withTimezone: true }).notNull().defaultNow(),
  startedAt: timestamp("started_at", { withTimezone: true }).notNull().defaultNow(),
  handlers: text("handlers").array().notNull().default(sql`'{}'`),
});

/**
 * Endpoint health per subscription (webhooks): since when its endpoint has failed without a
 * success. Workers write it when their view changes, at most about once a second per
 * subscription; a subscription failing for longer than the worker's
 * `webhooks.deactivateAfterFailingMs` is deactivated. Re-activating or re-configuring a
 * subscription deletes its row (a fresh start).
 */
export const subscriptionHealth = outboxSchema.table("_subscription_health", {
  subscription: text("subscription")
    .primaryKey()
    .references(() => subscriptions.name, { onDelete: "cascade", onUpdate: "cascade" }),
  failingSince: timestamp("failing_since", { withTimezone: true }),
  lastSuccessAt: timestamp("last_success_at", { withTimezone: true }),
  lastFailureAt: timestamp("last_failure_at", { withTimezone: true }),
});
