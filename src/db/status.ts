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

/** Counts of one subscription's unfinished or dead deliveries, for metrics. */
export interface DeliveryBacklog {
  subscription: string;
  status: "pending" | "retrying" | "delivering" | "dead";
  count: number;
  /** Age of the oldest of them (null for dead ones, whose age is not a backlog). */
  oldestAgeSeconds: number | null;
}

/** What a metrics scrape reads from the database: backlog per subscription and status, and dispatch lag. */
export interface StatusMetrics {
  backlog: DeliveryBacklog[];
  undispatchedEvents: number;
  dispatchLagSeconds: number;
}

/**
 * The database side of `/metrics`, cheap enough for every scrape: each part reads one
 * partial index (pending and retrying, delivering, dead), never the delivered history that
 * `outbox.subscription_status` counts for its last hour.
 */
export async function statusMetricsRead(sql: Sql): Promise<StatusMetrics> {
  try {
    const backlog = await sql<DeliveryBacklog[]>`
      select subscription, status, count(*)::int as count,
             extract(epoch from now() - min(created_at))::float8 as "oldestAgeSeconds"
      from outbox.deliveries where status in ('pending', 'retrying') group by 1, 2
      union all
      select subscription, 'delivering', count(*)::int, extract(epoch from now() - min(created_at))::float8
      from outbox.deliveries where status = 'delivering' group by 1
      union all
      select subscription, 'dead', count(*)::int, null
      from outbox.deliveries where status = 'dead' group by 1`;
    const [dispatch] = await sql<{ undispatched: number; lag: number | null }[]>`
      select undispatched_events::int as undispatched, lag_seconds::float8 as lag from outbox.dispatch_status`;
    return { backlog, undispatchedEvents: dispatch?.undispatched ?? 0, dispatchLagSeconds: dispatch?.lag ?? 0 };
  } catch (error) {
    throw wrapDatabaseError(error, "read metrics");
  }
}
