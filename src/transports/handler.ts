import type { DeliveryAttempt, DeliveryOutcome, OutboxEvent, Subscription, Transport } from "./transport.js";
import { errorText } from "./transport.js";

/** Context passed to a handler with each event. */
export interface HandlerContext {
  /** Attempt number, 1 for the first. */
  attempt: number;
  /** `outbox.deliveries.id` of this delivery. */
  deliveryId: string;
  /** The envelope as JSON text, for numbers beyond JavaScript's precision. */
  raw: string;
}

/** An in-process event handler. Throw to retry; throw {@link NonRetryableError} to go dead at once. */
export type EventHandler<TEvent = OutboxEvent> = (event: TEvent, context: HandlerContext) => unknown | Promise<unknown>;

/** Throw from a handler for a failure that retrying cannot fix: the delivery goes `dead`. */
export class NonRetryableError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "NonRetryableError";
  }
}

/**
 * The `handler` kind: calls functions registered by name in this worker. Only a worker that
 * registered a subscription's handler claims its deliveries.
 */
export class HandlerTransport implements Transport {
  readonly kind = "handler";
  /** Handlers usually return within the dispatch round's wait; those that do not are not waited for. */
  readonly settlesInRound = true;
  private readonly handlers = new Map<string, EventHandler>();

  register(name: string, handler: EventHandler): void {
    this.handlers.set(name, handler);
  }

  /** Names of the handlers registered here. */
  names(): string[] {
    return [...this.handlers.keys()];
  }

  batchSize(): number {
    return 1;
  }

  serves(subscription: Subscription): boolean {
    return this.handlers.has(subscription.name);
  }

  async deliver(subscription: Subscription, attempts: DeliveryAttempt[]): Promise<DeliveryOutcome[]> {
    const handler = this.handlers.get(subscription.name);
    return Promise.all(
      attempts.map(async (attempt): Promise<DeliveryOutcome> => {
        if (!handler) return { outcome: "retry", error: `no handler registered for ${subscription.name} in this worker` };
        try {
          await handler(JSON.parse(attempt.body) as OutboxEvent, {
            attempt: attempt.attempt,
            deliveryId: attempt.deliveryId,
            raw: attempt.body,
          });
          return { outcome: "delivered" };
        } catch (error) {
          return { outcome: error instanceof NonRetryableError ? "dead" : "retry", error: errorText(error) };
        }
      }),
    );
  }
}
