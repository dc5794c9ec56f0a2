import { z } from "zod";
import { arrayParam } from "../db/arrayParam.js";
import type { DeliveryAttempt, DeliveryOutcome, Subscription, Transport, TransportContext } from "./transport.js";
import { errorText } from "./transport.js";

/** Config of a `notify` subscription. */
export const notifyConfigSchema = z.strictObject({
  /** Channel to `pg_notify` on. */
  channel: z.string().min(1).max(63),
  /** Deliveries in flight across all workers; default unlimited. */
  concurrency: z.number().int().min(1).max(10_000).optional(),
});

/** PostgreSQL's NOTIFY payload limit is 8000 bytes. */
const MAX_PAYLOAD_BYTES = 7999;

/**
 * The `notify` kind: `pg_notify(channel, envelope)` for live listeners. A payload over
 * 8000 bytes is replaced by `{"id", "type", "truncated": true}`: the listener reads the rest
 * with `select payload from outbox.events where id = …`.
 */
export class NotifyTransport implements Transport {
  readonly kind = "notify";

  constructor(private readonly context: TransportContext) {}

  batchSize(): number {
    return 100;
  }

  serves(): boolean {
    return true;
  }

  async deliver(subscription: Subscription, attempts: DeliveryAttempt[]): Promise<DeliveryOutcome[]> {
    const parsed = notifyConfigSchema.safeParse(subscription.config);
    if (!parsed.success) return attempts.map(() => ({ outcome: "dead", error: "invalid notify config" }));
    const payloads = attempts.map((a) => {
      if (Buffer.byteLength(a.body) <= MAX_PAYLOAD_BYTES) return a.body;
      const { id, type } = JSON.parse(a.body) as { id: string; type: string };
      return JSON.stringify({ id, type, truncated: true });
    });
    try {
      await this.context.sql`
        select pg_notify(${parsed.data.channel}, p)
        from unnest(${arrayParam(this.context.sql, payloads, "text")}) with ordinality u(p, n) order by n`;
      return attempts.map(() => ({ outcome: "delivered" }));
    } catch (error) {
      return attempts.map(() => ({ outcome: "retry", error: errorText(error) }));
    }
  }
}
