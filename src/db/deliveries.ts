/** Runtime SQL on `outbox.deliveries` (the functions live in sql/120_deliveries.sql). */
import type { Sql } from "postgres";

/** A claimed delivery with its event's envelope. */
export interface ClaimedDelivery {
  id: string;
  attempts: number;
  eventId: string;
  eventPosition: string;
  payload: string;
}

/** Claims due deliveries of one subscription with a lease. */
export async function deliveryClaimDue(
  sql: Sql,
  worker: string,
  subscription: string,
  limit: number,
  leaseMs: number,
): Promise<ClaimedDelivery[]> {
  return sql<ClaimedDelivery[]>`
    select id::text, attempts, event_id as "eventId", event_position::text as "eventPosition", payload
    from outbox._delivery_claim(${worker}, ${subscription}, ${limit}, ${leaseMs})`;
}

/** The recorded outcome of one attempt. */
export interface DeliveryResult {
  id: string;
  outcome: "delivered" | "retry" | "dead";
  error: string | null;
  status: number | null;
  retryAfterMs: number | null;
}

/**
 * Records a batch of outcomes in one statement; returns how many were still leased to `worker`.
 * The columns travel as one JSON array of rows: the worker's clients do not fetch array types
 * (see `workerClientOptions`), so postgres.js cannot serialize JS arrays for them.
 */
export async function deliveryCompleteBatch(sql: Sql, worker: string, results: DeliveryResult[]): Promise<number> {
  if (results.length === 0) return 0;
  const rows = JSON.stringify(results.map((r) => [r.id, r.outcome, r.error, r.status, r.retryAfterMs]));
  const [row] = await sql<{ n: number }[]>`
    with r as (select x.v, x.n from json_array_elements(${rows}::text::json) with ordinality x(v, n))
    select outbox._delivery_complete(
      ${worker},
      array(select (v ->> 0)::bigint from r order by n),
      array(select v ->> 1 from r order by n),
      array(select v ->> 2 from r order by n),
      array(select (v ->> 3)::int from r order by n),
      array(select (v ->> 4)::int from r order by n)) as n`;
  return row?.n ?? 0;
}

/** Extends the leases of the deliveries `worker` holds; returns how many. */
export async function deliveryLeaseExtend(sql: Sql, worker: string, leaseMs: number): Promise<number> {
  const rows = await sql`
    update outbox.deliveries set locked_until = now() + make_interval(secs => ${leaseMs}::int / 1000.0)
    where status = 'delivering' and locked_by = ${worker}`;
  return rows.count;
}

/** Puts deliveries whose lease expired back in line; returns how many. */
export async function deliveryRecoverExpired(sql: Sql): Promise<number> {
  const [row] = await sql<{ n: number }[]>`select outbox._delivery_recover() as n`;
  return row?.n ?? 0;
}

/** Hands back the deliveries a stopping worker still holds; returns how many. */
export async function deliveryReleaseHeld(sql: Sql, worker: string): Promise<number> {
  const [row] = await sql<{ n: number }[]>`select outbox._delivery_release(${worker}) as n`;
  return row?.n ?? 0;
}
