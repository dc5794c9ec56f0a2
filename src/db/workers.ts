/** Runtime SQL on `outbox._workers`: who is running, who is idle (and wants a wake-up). */
import type { Sql } from "postgres";
import { arrayParam } from "./arrayParam.js";

/** Registers a worker process. */
export async function workerRegister(sql: Sql, id: string, handlers: string[]): Promise<void> {
  await sql`
    insert into outbox._workers (id, handlers)
    values (${id}, ${arrayParam(sql, handlers, "text")})
    on conflict (id) do update set handlers = excluded.handlers, heartbeat_at = now()`;
}

/**
 * Marks the worker idle until `ttlMs` from now (writes then NOTIFY it), or busy (null).
 * Also the heartbeat.
 */
export async function workerIdleSet(sql: Sql, id: string, ttlMs: number | null): Promise<void> {
  await sql`
    update outbox._workers set
      idle_until = case when ${ttlMs}::int is null then null else now() + make_interval(secs => ${ttlMs}::int / 1000.0) end,
      heartbeat_at = now()
    where id = ${id}`;
}

/** Removes a stopped worker, and any that stopped heartbeating long ago. */
export async function workerRemove(sql: Sql, id: string): Promise<void> {
  await sql`delete from outbox._workers where id = ${id} or heartbeat_at < now() - interval '1 hour'`;
}

/**
 * Transactions in flight (cluster-wide, as xid8 text): with `among` unset, those of a
 * snapshot taken now; otherwise those of `among` that are still running. The worker follows
 * the transactions in flight when its idle mark committed (src/worker/lateWriterWatch.ts).
 */
export async function transactionsInFlight(sql: Sql, among?: readonly string[]): Promise<string[]> {
  const rows = among
    ? await sql<{ xid: string }[]>`
        select x::text as xid from unnest(${arrayParam(sql, among, "xid8")}) x
        where pg_xact_status(x) = 'in progress'`
    : await sql<{ xid: string }[]>`select x::text as xid from pg_snapshot_xip(pg_current_snapshot()) x`;
  return rows.map((r) => r.xid);
}
