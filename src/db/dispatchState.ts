/** Runtime SQL of dispatch (`outbox._dispatch`, sql/110_dispatch.sql). */
import type { ReservedSql } from "postgres";

/** Result of one dispatch round. */
export interface DispatchRound {
  events: number;
  deliveries: number;
  lastId: string;
}

/** Advisory lock key: one dispatcher at a time, across all processes. */
export const DISPATCH_LOCK_KEY = 7_320_110_003;

/** Tries to become the dispatcher on this (reserved, session) connection. */
export async function dispatchLockTry(conn: ReservedSql): Promise<boolean> {
  const [row] = await conn<{ ok: boolean }[]>`select pg_try_advisory_lock(${DISPATCH_LOCK_KEY}) as ok`;
  return row?.ok === true;
}

/** Releases the dispatcher lock held by this connection. */
export async function dispatchLockRelease(conn: ReservedSql): Promise<void> {
  await conn`select pg_advisory_unlock(${DISPATCH_LOCK_KEY})`;
}

/**
 * Runs one dispatch round in a REPEATABLE READ transaction, in one round trip (the three
 * statements travel as one simple query). On error the transaction is rolled back.
 */
export async function dispatchRoundRun(conn: ReservedSql, maxEvents: number): Promise<DispatchRound> {
  try {
    const results = (await conn.unsafe(
      `begin isolation level repeatable read;
       select events, deliveries, last_id::text as "lastId" from outbox._dispatch(${Math.trunc(maxEvents)});
       commit;`,
    )) as unknown as Array<Array<DispatchRound>>;
    const row = results[1]?.[0];
    return row ?? { events: 0, deliveries: 0, lastId: "0" };
  } catch (error) {
    await conn`rollback`.catch(() => undefined);
    throw error;
  }
}
