/** Runtime SQL of dispatch (`outbox._dispatch`, sql/110_dispatch.sql). */
import type { Sql } from "postgres";
import { isConnectionError } from "../errors.js";

/** A delivery that dispatch wrote already claimed by the calling worker. */
export interface DispatchedClaim {
  id: string;
  subscription: string;
  eventId: string;
  eventPosition: string;
  payload: string;
}

/** Result of one dispatch round. */
export interface DispatchRound {
  events: number;
  deliveries: number;
  lastId: string;
  /** Deliveries written already claimed by this worker (see `outbox._dispatch`). */
  claimed: DispatchedClaim[];
}

/** What the calling worker claims while dispatching. */
export interface DispatchClaimRequest {
  worker: string;
  /** Subscriptions to claim for (served here, unordered, without a concurrency limit). */
  subscriptions: string[];
  /** At most this many per subscription. */
  limit: number;
  leaseMs: number;
}

/** Advisory lock key: one dispatcher at a time, across all processes. */
export const DISPATCH_LOCK_KEY = 7_320_110_003;

/** Tries to become the dispatcher on this session (a client with a pool of one). */
export async function dispatchLockTry(conn: Sql): Promise<boolean> {
  const [row] = await conn<{ ok: boolean }[]>`select pg_try_advisory_lock(${DISPATCH_LOCK_KEY}) as ok`;
  return row?.ok === true;
}

/** Releases the dispatcher lock held by this connection. */
export async function dispatchLockRelease(conn: Sql): Promise<void> {
  await conn`select pg_advisory_unlock(${DISPATCH_LOCK_KEY})`;
}

/**
 * Runs one dispatch round in a REPEATABLE READ transaction, in one round trip (the three
 * statements travel as one simple query, hence the literals: names are quoted as SQL
 * strings). On error the transaction is rolled back.
 */
export async function dispatchRoundRun(conn: Sql, maxEvents: number, claim?: DispatchClaimRequest): Promise<DispatchRound> {
  const literal = (value: string) => `'${value.replaceAll("'", "''")}'`;
  const claimArgs = claim
    ? `${literal(claim.worker)}, array[${claim.subscriptions.map(literal).join(",")}]::text[], ${Math.trunc(claim.limit)}, ${Math.trunc(claim.leaseMs)}`
    : "null, '{}', 0, 30000";
  try {
    const results = (await conn.unsafe(
      `begin isolation level repeatable read;
       select events, deliveries, last_id::text as "lastId", delivery_id::text as id, subscription,
              event_id as "eventId", event_position::text as "eventPosition", payload
       from outbox._dispatch(${Math.trunc(maxEvents)}, ${claimArgs});
       commit;`,
    )) as unknown as Array<Array<{ events: number; deliveries: number; lastId: string } & DispatchedClaim>>;
    const rows = results[1] ?? [];
    const first = rows[0];
    // Rows come in event order; an event's envelope is sent on its first row only.
    let payload = "";
    const claimed: DispatchedClaim[] = [];
    for (const r of rows) {
      if (r.id === null) continue;
      if (r.payload !== null) payload = r.payload;
      claimed.push({ id: r.id, subscription: r.subscription, eventId: r.eventId, eventPosition: r.eventPosition, payload });
    }
    return { events: first?.events ?? 0, deliveries: first?.deliveries ?? 0, lastId: first?.lastId ?? "0", claimed };
  } catch (error) {
    // After a failed statement the session is in an aborted transaction: end it, unless the
    // connection itself is gone (writing to it then can crash postgres.js).
    if (!isConnectionError(error)) await conn`rollback`.catch(() => undefined);
    throw error;
  }
}
