/**
 * Helpers shared by the delivery tests (test/delivery.*.test.ts): in-process workers,
 * captured tables, and queries on `outbox.deliveries`.
 */
import type { ReservedSql, Sql } from "postgres";
import { createOutbox, type Outbox } from "../src/outbox.js";
import type { OutboxWorker } from "../src/worker/worker.js";
import type { TestDatabase } from "./harness.js";

/** Worker settings of the tests: a fast safety-net poll and a short lease. */
export const testWorkerOptions = { pollIntervalMs: 200, leaseMs: 2000 } as const;

/** An outbox API on the test database; `setup` registers handlers before the worker starts. */
export async function startOutbox(
  db: TestDatabase,
  setup: (outbox: Outbox) => void = () => undefined,
  worker: { pollIntervalMs?: number; leaseMs?: number; idleTtlMs?: number; settleWithinMs?: number } = testWorkerOptions,
): Promise<{ outbox: Outbox; worker: OutboxWorker; stop: () => Promise<void> }> {
  const outbox = createOutbox({ connectionString: db.url, worker: { ...testWorkerOptions, ...worker } });
  setup(outbox);
  let running: OutboxWorker;
  try {
    running = await outbox.start();
  } catch (error) {
    await outbox.close();
    throw error;
  }
  let stopped = false;
  return {
    outbox,
    worker: running,
    stop: async () => {
      if (stopped) return;
      stopped = true;
      await running.stop();
      await outbox.close();
    },
  };
}

/** Creates a captured table of the test's own: `id bigint primary key`, `status`, `email`, `org`, `body`. */
export async function capturedTable(sql: Sql, table: string, options = ""): Promise<void> {
  await sql.unsafe(`
    create table ${table} (id bigint primary key, status text, email text, org text, body text, version int default 1);
    select outbox.enable_capture('${table}'${options ? `, ${options}` : ""});`);
}

/** A delivery row as the tests read it. */
export interface DeliveryRow {
  id: string;
  event_id: string;
  subscription: string;
  status: string;
  attempts: number;
  next_attempt_at: Date;
  last_error: string | null;
  delivered_at: Date | null;
  updated_at: Date;
  row_id: number | null;
  op: string | null;
}

/** The deliveries of a subscription in event order, with the captured row's id and op. */
export async function deliveriesOf(sql: Sql, subscription: string): Promise<DeliveryRow[]> {
  return sql<DeliveryRow[]>`
    select d.id::text, d.event_id::text, d.subscription, d.status, d.attempts, d.next_attempt_at, d.last_error,
           d.delivered_at, d.updated_at, (e.key ->> 'id')::int as row_id, e.op
    from outbox.deliveries d
    left join outbox.events e on e.id = d.event_id
    where d.subscription = ${subscription}
    order by d.event_position`;
}

/** Counts of a subscription's deliveries by status. */
export async function statusCounts(sql: Sql, subscription: string): Promise<Record<string, number>> {
  const rows = await sql<{ status: string; n: number }[]>`
    select status, count(*)::int as n from outbox.deliveries where subscription = ${subscription} group by status`;
  return Object.fromEntries(rows.map((r) => [r.status, r.n]));
}

/**
 * Makes a subscription's waiting retries due now: the backoff is random up to 2^n s, and
 * tests that fail an event several times should not wait for it. Only the wait changes.
 */
export async function hastenRetries(sql: Sql, subscription: string): Promise<void> {
  await sql`
    update outbox.deliveries set next_attempt_at = now()
    where subscription = ${subscription} and status = 'retrying' and next_attempt_at > now()`;
}

/** Runs one dispatch round by hand, the way the dispatcher does (REPEATABLE READ, one snapshot). */
export async function dispatchOnce(sql: Sql): Promise<{ events: number; deliveries: number }> {
  const conn = await sql.reserve();
  try {
    await conn`begin isolation level repeatable read`;
    const rows = await conn<{ events: number; deliveries: number }[]>`select events, deliveries from outbox._dispatch()`;
    await conn`commit`;
    return { events: rows[0]?.events ?? 0, deliveries: rows[0]?.deliveries ?? 0 };
  } catch (error) {
    await conn`rollback`.catch(() => undefined);
    throw error;
  } finally {
    conn.release();
  }
}

/** One recorded outcome: the delivery row as an attempt's outcome left it. */
export interface RecordedOutcome {
  id: string;
  status: string;
  attempts: number;
  next_attempt_at: Date;
  last_error: string | null;
  last_status: number | null;
  delivered_at: Date | null;
  updated_at: Date;
}

/**
 * Records every outcome written to a subscription's deliveries (a trigger of the test's own
 * database), so a test can read the state an attempt left even when the next attempt is
 * claimed before the test looks: a full-jitter retry may come within milliseconds.
 * Returns a reader of the outcomes in the order they were written.
 */
export async function recordOutcomes(sql: Sql, subscription: string): Promise<() => Promise<RecordedOutcome[]>> {
  const table = `test_outcomes_${subscription.replace(/\W/g, "_")}`;
  await sql.unsafe(`
    create table ${table} (seq bigserial primary key, id bigint, status text, attempts int,
      next_attempt_at timestamptz, last_error text, last_status int, delivered_at timestamptz, updated_at timestamptz);
    -- Qualified: the outbox functions that update deliveries run with their own search_path.
    create function ${table}_tg() returns trigger language plpgsql as $fn$
    begin
      insert into public.${table} (id, status, attempts, next_attempt_at, last_error, last_status, delivered_at, updated_at)
      values (new.id, new.status, new.attempts, new.next_attempt_at, new.last_error, new.last_status, new.delivered_at, new.updated_at);
      return null;
    end $fn$;
    create trigger ${table} after update on outbox.deliveries for each row
      when (new.subscription = '${subscription.replace(/'/g, "''")}' and new.status in ('retrying', 'dead', 'delivered'))
      execute function ${table}_tg();`);
  return () =>
    sql.unsafe<RecordedOutcome[]>(`
      select id::text, status, attempts, next_attempt_at, last_error, last_status, delivered_at, updated_at from ${table} order by seq`);
}

/** Whether worker `id` is marked idle now (writes then wake it). */
export async function workerMarkedIdle(sql: Sql, id: string): Promise<boolean> {
  return (await sql`select from outbox._workers where id = ${id} and idle_until > now()`).length === 1;
}

/**
 * Runs `work` in one transaction on `conn` and says what it did to `relation`: sequential
 * scans, and heap rows fetched by index scans. Counted as the difference of two readings
 * within the transaction: the session's counters may still hold earlier transactions' counts
 * (PostgreSQL 15 flushes them at most once a second), which made a round seem to fetch the
 * previous round's 2,000 rows in one run of three.
 */
export async function xactTableWork<T>(
  conn: ReservedSql,
  relation: string,
  work: () => Promise<T>,
  isolation: "read committed" | "repeatable read" = "read committed",
): Promise<{ result: T; seqScans: number; fetched: number }> {
  const counters = async () =>
    (await conn<{ seq: number; fetched: number }[]>`
      select seq_scan::int as seq, idx_tup_fetch::int as fetched
      from pg_stat_xact_user_tables where relid = ${relation}::regclass`)[0] ?? { seq: 0, fetched: 0 };
  await conn.unsafe(`begin isolation level ${isolation}`);
  try {
    const before = await counters();
    const result = await work();
    const after = await counters();
    await conn`commit`;
    return { result, seqScans: after.seq - before.seq, fetched: after.fetched - before.fetched };
  } catch (error) {
    await conn`rollback`.catch(() => undefined);
    throw error;
  }
}

/** One dispatch round on `conn` claiming for `subscription`, with what it did to outbox._events (see {@link xactTableWork}). */
export async function dispatchRoundStats(conn: ReservedSql, subscription: string): Promise<{ events: number; seqScans: number; fetched: number }> {
  const { result, seqScans, fetched } = await xactTableWork(
    conn,
    "outbox._events",
    async () => (await conn<{ events: number }[]>`
      select events from outbox._dispatch(2000, 'w', ${"{" + subscription + "}"}::text[], 2000) limit 1`)[0]?.events ?? 0,
    "repeatable read",
  );
  return { events: result, seqScans, fetched };
}
