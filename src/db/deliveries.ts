/** Runtime SQL on `outbox.deliveries` (the functions live in sql/120_deliveries.sql). */
import type { Sql } from "postgres";
import { wrapDatabaseError } from "../errors.js";
import { arrayParam } from "./arrayParam.js";

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
 * On the hot path (up to 5,000 outcomes per statement): one JSON array per column converts
 * about twice as fast as one array of rows taken apart per column.
 */
export async function deliveryCompleteBatch(sql: Sql, worker: string, results: DeliveryResult[]): Promise<number> {
  if (results.length === 0) return 0;
  const [row] = await sql<{ n: number }[]>`
    select outbox._delivery_complete(
      ${worker},
      ${arrayParam(sql, results.map((r) => r.id), "bigint")},
      ${arrayParam(sql, results.map((r) => r.outcome), "text")},
      ${arrayParam(sql, results.map((r) => r.error), "text")},
      ${arrayParam(sql, results.map((r) => r.status), "int")},
      ${arrayParam(sql, results.map((r) => r.retryAfterMs), "int")}) as n`;
  return row?.n ?? 0;
}

/**
 * Extends the leases of the deliveries `worker` holds that run out within two thirds of a
 * lease (so those claimed in the last third are left alone); returns how many.
 */
export async function deliveryLeaseExtend(sql: Sql, worker: string, leaseMs: number): Promise<number> {
  const rows = await sql`
    update outbox.deliveries set locked_until = now() + make_interval(secs => ${leaseMs}::int / 1000.0)
    where status = 'delivering' and locked_by = ${worker}
      and locked_until < now() + make_interval(secs => ${leaseMs}::int / 1500.0)`;
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

/** Delivery statuses, in the order a delivery passes through them. */
export const deliveryStatuses = ["pending", "delivering", "retrying", "delivered", "dead"] as const;

/** A delivery status. */
export type DeliveryStatus = (typeof deliveryStatuses)[number];

/** A row of `outbox.deliveries` with its event's topic, as `outbox deliveries` lists it. */
export interface DeliveryRow {
  /** `outbox.deliveries.id` (bigint as a string): what `redeliver` takes. */
  id: string;
  eventId: string;
  /** The event's topic (`public.users.insert`, or an emitted topic). */
  topic: string;
  subscription: string;
  status: DeliveryStatus;
  attempts: number;
  nextAttemptAt: Date;
  lastError: string | null;
  lastStatus: number | null;
  deliveredAt: Date | null;
  createdAt: Date;
  updatedAt: Date;
}

/** Filter of {@link deliveryList}. */
export interface DeliveryListFilter {
  /** Only this status; default all. */
  status?: DeliveryStatus;
  /** Only this subscription; default all. */
  subscription?: string;
  /** At most this many, newest first; default 50. */
  limit?: number;
}

/** Deliveries, newest first, with their event's topic. */
export async function deliveryList(sql: Sql, filter: DeliveryListFilter = {}): Promise<DeliveryRow[]> {
  try {
    // The topic comes from the stored event row (one per statement), not from the events
    // view, which would assemble every envelope of the statement.
    return await sql<DeliveryRow[]>`
      select d.id::text as id, d.event_id::text as "eventId", outbox._event_topic(e) as topic, d.subscription,
             d.status, d.attempts, d.next_attempt_at as "nextAttemptAt", d.last_error as "lastError",
             d.last_status as "lastStatus", d.delivered_at as "deliveredAt", d.created_at as "createdAt",
             d.updated_at as "updatedAt"
      from outbox.deliveries d
      left join outbox._events e on e.id = d.event_position >> 16
      where (${filter.status ?? null}::text is null or d.status = ${filter.status ?? null})
        and (${filter.subscription ?? null}::text is null or d.subscription = ${filter.subscription ?? null})
      order by d.id desc
      limit ${filter.limit ?? 50}`;
  } catch (error) {
    throw wrapDatabaseError(error, "list deliveries");
  }
}

/**
 * Puts dead or delivered deliveries back in line (`outbox.redeliver`), all or none: one
 * unknown or still-queued id changes nothing. Returns how many.
 */
export async function deliveryRedeliver(sql: Sql, ids: string[]): Promise<number> {
  try {
    await sql.begin(async (tx) => {
      for (const id of ids) await tx`select outbox.redeliver(${id}::bigint)`;
    });
    return ids.length;
  } catch (error) {
    throw wrapDatabaseError(error, "redeliver");
  }
}

/**
 * Replays a subscription since a time (`outbox.replay`): its dead and delivered deliveries
 * of events since then return to pending, and matching events it has none for get one.
 * Returns the number of deliveries put in line.
 */
export async function deliveryReplay(sql: Sql, subscription: string, since: Date): Promise<number> {
  try {
    const [row] = await sql<{ n: number }[]>`select outbox.replay(${subscription}, ${since.toISOString()}::timestamptz) as n`;
    return row?.n ?? 0;
  } catch (error) {
    throw wrapDatabaseError(error, `replay ${subscription}`);
  }
}
