/**
 * A worker's Prometheus metrics. Counters and the latency histogram are fed by the worker as
 * it dispatches and delivers ({@link WorkerMetrics.dispatchRan},
 * {@link WorkerMetrics.attemptFinished}); backlog and lag gauges are read from the database
 * at each scrape, so every worker reports the same database-wide values (aggregate them with
 * `max`, not `sum`).
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { StatusMetrics } from "../db/status.js";
import type { Logger } from "../logger.js";
import type { DeliveryAttempt, DeliveryOutcome, Subscription } from "../transports/transport.js";

/** Latency buckets in seconds: from a few milliseconds (an idle worker) to the one-hour backoff cap. */
const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600];

/** The milliseconds since the epoch that an event id carries (its first 48 bits, UUIDv7 layout). */
function eventTimeMs(eventId: string): number {
  return Number.parseInt(eventId.replaceAll("-", "").slice(0, 12), 16);
}

/** The metrics of one worker, in a registry of its own (several workers may share a process). */
export class WorkerMetrics {
  /** The registry `/metrics` renders. */
  readonly registry = new Registry();
  private readonly dispatched: Counter;
  private readonly rounds: Counter;
  private readonly deliveries: Counter<"subscription" | "outcome">;
  private readonly latency: Histogram<"subscription">;

  /**
   * `readStatus` reads the database side (backlog, lag) once per scrape; it should give up
   * after a few seconds, so that a scrape never hangs on an unreachable database.
   */
  constructor(options: { readStatus: () => Promise<StatusMetrics>; logger: Logger; workerId: string }) {
    const registry = this.registry;
    registry.setDefaultLabels({ worker: options.workerId });
    collectDefaultMetrics({ register: registry });
    this.dispatched = new Counter({
      name: "outbox_events_dispatched_total",
      help: "Events this worker dispatched (matched to subscriptions and written as deliveries).",
      registers: [registry],
    });
    this.rounds = new Counter({
      name: "outbox_dispatch_rounds_total",
      help: "Dispatch rounds this worker ran, those that found no event included: the fixed cost that batching spreads over events.",
      registers: [registry],
    });
    this.deliveries = new Counter({
      name: "outbox_deliveries_total",
      help: "Delivery attempts this worker finished, by subscription and outcome (delivered, retry, dead).",
      labelNames: ["subscription", "outcome"],
      registers: [registry],
    });
    this.latency = new Histogram({
      name: "outbox_delivery_latency_seconds",
      help: "From the event's time (its transaction's start) to its delivery, per subscription; retries included.",
      labelNames: ["subscription"],
      buckets: LATENCY_BUCKETS,
      registers: [registry],
    });

    // One database read per scrape for all these gauges. prom-client collects the metrics of
    // a scrape concurrently, so each collect() awaits the same read, started by the first.
    let reading: Promise<void> | undefined;
    const read = () =>
      (reading ??= (async () => {
        backlog.reset();
        oldest.reset();
        try {
          const status = await options.readStatus();
          const oldestBySubscription = new Map<string, number>();
          for (const row of status.backlog) {
            backlog.set({ subscription: row.subscription, status: row.status }, row.count);
            if (row.oldestAgeSeconds !== null) {
              oldestBySubscription.set(row.subscription, Math.max(oldestBySubscription.get(row.subscription) ?? 0, row.oldestAgeSeconds));
            }
          }
          for (const [subscription, age] of oldestBySubscription) oldest.set({ subscription }, age);
          lag.set(status.dispatchLagSeconds);
          undispatched.set(status.undispatchedEvents);
          up.set(1);
        } catch (error) {
          options.logger.warn({ err: error }, "metrics: could not read the database");
          up.set(0);
        }
      })().finally(() => {
        reading = undefined;
      }));

    const up = new Gauge({ name: "outbox_database_up", help: "1 when the last scrape could read the database, else 0.", collect: () => read(), registers: [registry] });
    const backlog = new Gauge({
      name: "outbox_deliveries",
      help: "Deliveries now pending, retrying, delivering or dead, per subscription (database-wide).",
      labelNames: ["subscription", "status"],
      collect: () => read(), registers: [registry],
    });
    const oldest = new Gauge({
      name: "outbox_oldest_pending_age_seconds",
      help: "Age of the oldest unfinished (pending, retrying or delivering) delivery per subscription (database-wide).",
      labelNames: ["subscription"],
      collect: () => read(), registers: [registry],
    });
    const lag = new Gauge({
      name: "outbox_dispatch_lag_seconds",
      help: "Age of the oldest committed event dispatch has not read yet; 0 when caught up (database-wide).",
      collect: () => read(), registers: [registry],
    });
    const undispatched = new Gauge({
      name: "outbox_events_undispatched",
      help: "Committed events dispatch has not read yet (database-wide).",
      collect: () => read(), registers: [registry],
    });
  }

  /** Called after dispatching with the number of rounds run and the events they read. */
  dispatchRan(rounds: number, events: number): void {
    if (rounds > 0) this.rounds.inc(rounds);
    if (events > 0) this.dispatched.inc(events);
  }

  /**
   * Called when an attempt finished. A retry that used the subscription's last attempt is
   * counted as dead, as the database records it.
   */
  attemptFinished(subscription: Subscription, attempt: DeliveryAttempt, outcome: DeliveryOutcome): void {
    const kind = outcome.outcome === "retry" && attempt.attempt >= subscription.maxAttempts ? "dead" : outcome.outcome;
    this.deliveries.inc({ subscription: subscription.name, outcome: kind });
    if (kind === "delivered") {
      this.latency.observe({ subscription: subscription.name }, Math.max(0, (Date.now() - eventTimeMs(attempt.eventId)) / 1000));
    }
  }
}
