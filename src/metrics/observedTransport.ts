import type { DeliveryAttempt, DeliveryOutcome, Subscription, Transport } from "../transports/transport.js";
import { errorText } from "../transports/transport.js";
import type { WorkerMetrics } from "./workerMetrics.js";

/**
 * A transport that reports each finished attempt to the worker's metrics and otherwise
 * behaves exactly like the one it wraps. Wrapping keeps metrics out of the delivery engine:
 * a worker without a metrics port uses its transports as they are, at no cost.
 */
export class ObservedTransport implements Transport {
  readonly kind: string;
  readonly settlesInRound: boolean | undefined;

  constructor(
    private readonly inner: Transport,
    private readonly metrics: WorkerMetrics,
  ) {
    this.kind = inner.kind;
    this.settlesInRound = inner.settlesInRound;
  }

  batchSize(subscription: Subscription): number {
    return this.inner.batchSize(subscription);
  }

  serves(subscription: Subscription): boolean {
    return this.inner.serves(subscription);
  }

  async deliver(subscription: Subscription, attempts: DeliveryAttempt[]): Promise<DeliveryOutcome[]> {
    let outcomes: DeliveryOutcome[];
    try {
      outcomes = await this.inner.deliver(subscription, attempts);
    } catch (error) {
      // The deliverer records a throwing transport's attempts as retries: count them so.
      for (const attempt of attempts) this.metrics.attemptFinished(subscription, attempt, { outcome: "retry", error: errorText(error) });
      throw error;
    }
    attempts.forEach((attempt, i) =>
      this.metrics.attemptFinished(subscription, attempt, outcomes[i] ?? { outcome: "retry", error: "transport returned no outcome" }),
    );
    return outcomes;
  }

  close(): Promise<void> {
    return this.inner.close?.() ?? Promise.resolve();
  }
}
