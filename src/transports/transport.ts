/**
 * The transport interface: how a delivery leaves the process. One file per kind
 * (handler.ts, notify.ts, webhook.ts). Transports never throw for a failed delivery: they
 * return an outcome, and the delivery engine records it.
 */
import type { Sql } from "postgres";
import type { Logger } from "../logger.js";

/** A subscription as the worker caches it (`outbox.subscriptions`). */
export interface Subscription {
  name: string;
  pattern: string;
  kind: string;
  config: Record<string, unknown>;
  filter: string | null;
  tenant: string | null;
  active: boolean;
  maxAttempts: number;
  ordered: boolean;
}

/** The envelope of DESIGN.md, as delivered. */
export interface OutboxEvent<TData = unknown, TRow = Record<string, unknown>> {
  id: string;
  type: string;
  time: string;
  op?: "insert" | "update" | "delete" | "truncate";
  table?: { schema: string; name: string };
  key?: unknown;
  new?: TRow | null;
  old?: TRow | null;
  changed?: string[];
  data?: TData;
  tenant?: string;
  actor?: string;
  correlation_id?: string;
  causation_id?: string;
  traceparent?: string;
}

/** One claimed delivery, handed to a transport. */
export interface DeliveryAttempt {
  /** `outbox.deliveries.id`. */
  deliveryId: string;
  /** Attempt number, 1 for the first. */
  attempt: number;
  /** The envelope as JSON text exactly as PostgreSQL rendered it (numeric precision intact). */
  body: string;
  /** The event id (same on every attempt). */
  eventId: string;
}

/** What happened to one attempt. */
export type DeliveryOutcome =
  | { outcome: "delivered"; status?: number }
  | {
      outcome: "retry" | "dead";
      /** A short reason without secrets, stored in `last_error`. */
      error: string;
      status?: number;
      /** Wait before the next attempt instead of the backoff (e.g. from Retry-After). */
      retryAfterMs?: number;
      /** Deactivate the subscription with this reason (e.g. a webhook answered 410 Gone). */
      deactivate?: string;
    };

/** What a transport gets to work with. */
export interface TransportContext {
  /**
   * The worker's pool. It does not fetch array types (see src/worker/workerClientOptions.ts):
   * pass arrays to queries with `arrayParam` (src/db/arrayParam.ts), which sends them as JSON.
   */
  sql: Sql;
  logger: Logger;
}

/** A delivery mechanism for one subscription kind. */
export interface Transport {
  /** The `kind` of the subscriptions it serves. */
  readonly kind: string;
  /** How many attempts it takes per call (a webhook's batch_size); default 1. */
  batchSize(subscription: Subscription): number;
  /** Whether this worker can deliver for `subscription` (a handler must be registered here). */
  serves(subscription: Subscription): boolean;
  /**
   * Whether dispatch may write this transport's first attempts as delivered and wait for them
   * before it commits (see src/delivery/roundSettlement.ts): for deliveries that finish in
   * this process within milliseconds. Default false.
   */
  readonly settlesInRound?: boolean;
  /** Delivers attempts; returns one outcome per attempt, in order. Must not throw. */
  deliver(subscription: Subscription, attempts: DeliveryAttempt[]): Promise<DeliveryOutcome[]>;
  /** Releases connections. */
  close?(): Promise<void>;
}

/** Short, single-line error text for `last_error`, without stack traces. */
export function errorText(error: unknown, max = 300): string {
  const text = error instanceof Error ? `${error.name === "Error" ? "" : `${error.name}: `}${error.message}` : String(error);
  return text.replace(/\s+/g, " ").slice(0, max);
}
