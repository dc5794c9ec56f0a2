/** Runtime SQL of dispatch (`outbox._dispatch`, sql/110_dispatch.sql). */
import type { Sql } from "postgres";
import { isConnectionError, OutboxError } from "../errors.js";
import { arrayParam } from "./arrayParam.js";

/** A delivery that dispatch wrote already claimed by the calling worker. */
export interface DispatchedClaim {
  id: string;
  subscription: string;
  eventId: string;
  eventPosition: string;
  payload: string;
  /** Written as delivered, to be settled before the round commits (see {@link DispatchClaimRequest.settle}). */
  settle: boolean;
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
  /**
   * Of `subscriptions`, those whose deliveries are written as delivered and settled before the
   * round commits (in-process handlers; see `outbox._dispatch`'s p_settle). Default none.
   */
  settle?: string[];
}

/**
 * Takes a round's claimed deliveries. In a round that settles (see
 * {@link DispatchClaimRequest.settle}) it is called while the transaction is open and resolves
 * to the ids of settled deliveries that did not succeed in time, which are put back to
 * delivering before the commit; otherwise it is called after the commit, and resolves to none.
 */
export type DispatchHandOff = (round: DispatchRound) => Promise<string[]>;

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
 * strings), and gives what it claimed to `handOff`. On error the transaction is rolled back.
 *
 * A round that settles deliveries (`claim.settle`) leaves its transaction open while
 * `handOff` runs them, then puts back those that did not succeed and commits, in a second
 * round trip. Without a `handOff` nothing is settled: nobody would run the deliveries.
 */
export async function dispatchRoundRun(
  conn: Sql,
  maxEvents: number,
  claim?: DispatchClaimRequest,
  handOff?: DispatchHandOff,
): Promise<DispatchRound> {
  const literal = (value: string) => `'${value.replaceAll("'", "''")}'`;
  const names = (list: string[]) => `array[${list.map(literal).join(",")}]::text[]`;
  const settling = handOff !== undefined && (claim?.settle?.length ?? 0) > 0;
  const claimArgs = claim
    ? `${literal(claim.worker)}, ${names(claim.subscriptions)}, ${Math.trunc(claim.limit)}, ${Math.trunc(claim.leaseMs)}, ${names(settling ? claim.settle! : [])}`
    : "null, '{}', 0, 30000, '{}'";
  try {
    const results = (await conn.unsafe(
      `begin isolation level repeatable read;
       select events, deliveries, last_id::text as "lastId", delivery_id::text as id, subscription,
              event_id as "eventId", event_position::text as "eventPosition", payload, settle
       from outbox._dispatch(${Math.trunc(maxEvents)}, ${claimArgs});
       ${settling ? "" : "commit;"}`,
    )) as unknown as Array<Array<{ events: number; deliveries: number; lastId: string } & DispatchedClaim>>;
    const rows = results[1] ?? [];
    const first = rows[0];
    // Rows come in event order; an event's envelope is sent on its first row only.
    let payload = "";
    let position = "";
    const claimed: DispatchedClaim[] = [];
    for (const r of rows) {
      if (r.id === null) continue;
      if (r.payload !== null) payload = r.payload;
      else if (r.eventPosition !== position) throw new OutboxError("database_error", `dispatch returned no envelope for the event at position ${r.eventPosition}`);
      position = r.eventPosition;
      claimed.push({ id: r.id, subscription: r.subscription, eventId: r.eventId, eventPosition: r.eventPosition, payload, settle: r.settle });
    }
    const round = { events: first?.events ?? 0, deliveries: first?.deliveries ?? 0, lastId: first?.lastId ?? "0", claimed };
    const held = claimed.length > 0 ? ((await handOff?.(round)) ?? []) : [];
    if (settling) {
      if (held.length > 0) {
        const [row] = await conn<{ n: number }[]>`
          select outbox._delivery_hold(${claim!.worker}, ${arrayParam(conn, held, "bigint")}, ${Math.trunc(claim!.leaseMs)}) as n`;
        // Anything else would leave a delivery recorded as delivered that was not: roll back.
        if (row?.n !== held.length) throw new OutboxError("database_error", `dispatch could put back ${row?.n} of ${held.length} unsettled deliveries`);
      }
      await conn`commit`;
    }
    return round;
  } catch (error) {
    // After a failed statement the session is in an aborted transaction: end it, unless the
    // connection itself is gone (writing to it then can crash postgres.js).
    if (!isConnectionError(error)) await conn`rollback`.catch(() => undefined);
    throw error;
  }
}
