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

/** Records a batch of outcomes in one statement; returns how many were still leased to `worker`. */
export async function deliveryCompleteBatch(sql: Sql, worker: string, results: DeliveryResult[]): Promise<number> {
  if (results.length === 0) return 0;
  const [row] = await sql<{ n: number }[]>`
    select outbox._delivery_complete(
      ${worker},
      ${results.map((r) => r.id)}::bigint[],
      ${results.map((r) => r.outcome)}::text[],
      ${results.map((r) => r.error)}::text[],
      ${results.map((r) => r.status)}::int[],
      ${results.map((r) => r.retryAfterMs)}::int[]) as n`;
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
