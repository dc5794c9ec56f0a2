/** Runtime SQL on `outbox._subscription_health` (the function lives in sql/140_subscription_health.sql). */
import type { Sql } from "postgres";

/**
 * Records that a subscription's endpoint answered well (`ok`) or failed. Returns since when
 * it has failed without a success, when that is longer ago than `deactivateAfterMs` (0:
 * never); otherwise null.
 */
export async function subscriptionHealthRecord(sql: Sql, subscription: string, ok: boolean, deactivateAfterMs: number): Promise<Date | null> {
  const [row] = await sql<{ since: Date | null }[]>`
    select outbox._subscription_health_record(${subscription}, ${ok}, ${deactivateAfterMs}::bigint) as since`;
  return row?.since ?? null;
}
