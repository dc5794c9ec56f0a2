/** Runtime SQL of `outbox status`: the status views and capture health. */
import type { Sql } from "postgres";
import { wrapDatabaseError } from "../errors.js";
import { captureList, type CaptureRow } from "./captures.js";

/** One row of `outbox.subscription_status`. */
export interface SubscriptionStatus {
  subscription: string;
  kind: string;
  pattern: string;
  active: boolean;
  disabledReason: string | null;
  pending: number;
  retrying: number;
  delivering: number;
  dead: number;
  deliveredLastHour: number;
  oldestPendingAgeSeconds: number | null;
}

/** `outbox.dispatch_status`. */
export interface DispatchStatus {
  undispatchedEvents: number;
  lagSeconds: number | null;
  transactionsInFlight: number;
  dispatchedAt: Date | null;
}

/** Everything `outbox status` shows. */
export interface OutboxStatus {
  subscriptions: SubscriptionStatus[];
  dispatch: DispatchStatus;
  captures: CaptureRow[];
}

/** Reads delivery status, dispatch lag and capture health. */
export async function statusRead(sql: Sql): Promise<OutboxStatus> {
  try {
    const subscriptions = await sql<SubscriptionStatus[]>`
      select subscription, kind, pattern, active, disabled_reason as "disabledReason",
             pending::int, retrying::int, delivering::int, dead::int,
             delivered_last_hour::int as "deliveredLastHour",
             oldest_pending_age_seconds::float8 as "oldestPendingAgeSeconds"
      from outbox.subscription_status order by subscription`;
    const [dispatch] = await sql<DispatchStatus[]>`
      select undispatched_events::int as "undispatchedEvents", lag_seconds::float8 as "lagSeconds",
             coalesce(transactions_in_flight, 0)::int as "transactionsInFlight", dispatched_at as "dispatchedAt"
      from outbox.dispatch_status`;
    return {
      subscriptions,
      dispatch: dispatch ?? { undispatchedEvents: 0, lagSeconds: null, transactionsInFlight: 0, dispatchedAt: null },
      captures: await captureList(sql),
    };
  } catch (error) {
    throw wrapDatabaseError(error, "read status");
  }
}
