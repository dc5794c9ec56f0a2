import { createHmac } from "node:crypto";
import { Agent, request } from "undici";
import { z } from "zod";
import type { DeliveryAttempt, DeliveryOutcome, Subscription, Transport, TransportContext } from "./transport.js";
import { errorText } from "./transport.js";

/** Config of a `webhook` subscription (the SQL trigger checks the same shape). */
export const webhookConfigSchema = z.strictObject({
  /** http:// or https:// endpoint. */
  url: z.string().url().refine((u) => /^https?:\/\//.test(u), "must be http:// or https://"),
  /** Standard Webhooks secret `whsec_<base64>`; several, space-separated, during rotation. Default: unsigned. */
  secret: z.string().regex(/^whsec_[A-Za-z0-9+/=]{16,}( whsec_[A-Za-z0-9+/=]{16,})*$/).optional(),
  /** Extra request headers; default none. */
  headers: z.record(z.string(), z.string()).optional(),
  /** Per-request timeout; default 10000 ms. */
  timeout_ms: z.number().min(100).max(300_000).optional(),
  /** Events per request: 1 sends the envelope, more send a JSON array; default 1. */
  batch_size: z.number().int().min(1).max(1000).optional(),
  /** Requests in flight across all workers; default unlimited (this worker's limit applies). */
  concurrency: z.number().int().min(1).max(10_000).optional(),
  /** Allow private addresses even when the worker refuses them; default false. */
  allow_private: z.boolean().optional(),
});
export type WebhookConfig = z.infer<typeof webhookConfigSchema>;

const MAX_RESPONSE_BYTES = 64 * 1024;

/** Standard Webhooks signature header value: `v1,<base64 HMAC-SHA256 of id.timestamp.body>` per secret. */
export function webhookSignature(secrets: string, id: string, timestamp: number, body: string): string {
  return secrets
    .split(" ")
    .map((secret) => {
      const key = Buffer.from(secret.replace(/^whsec_/, ""), "base64");
      return `v1,${createHmac("sha256", key).update(`${id}.${timestamp}.${body}`).digest("base64")}`;
    })
    .join(" ");
}

/** A Retry-After header (seconds or HTTP date) in ms, capped at one hour. */
export function retryAfterMs(header: string | string[] | undefined, now = Date.now()): number | undefined {
  const value = Array.isArray(header) ? header[0] : header;
  if (!value) return undefined;
  const seconds = Number(value);
  const ms = Number.isFinite(seconds) ? seconds * 1000 : Date.parse(value) - now;
  if (!Number.isFinite(ms)) return undefined;
  return Math.min(Math.max(0, ms), 3_600_000);
}

/**
 * The `webhook` kind: signed POSTs with a keep-alive pool per origin (undici), a timeout that
 * aborts, a bounded response read. 2xx delivered; 408, 429, 5xx, timeouts and connection
 * errors retry (Retry-After honoured); 410 deactivates the subscription; other 4xx are dead.
 */
export class WebhookTransport implements Transport {
  readonly kind = "webhook";
  private readonly agent = new Agent({ keepAliveTimeout: 30_000, connections: 128, pipelining: 1 });

  constructor(private readonly context: TransportContext) {}

  batchSize(subscription: Subscription): number {
    const n = Number(subscription.config.batch_size ?? 1);
    return Number.isInteger(n) && n > 0 ? n : 1;
  }

  serves(): boolean {
    return true;
  }

  async deliver(subscription: Subscription, attempts: DeliveryAttempt[]): Promise<DeliveryOutcome[]> {
    const parsed = webhookConfigSchema.safeParse(subscription.config);
    if (!parsed.success) return attempts.map(() => ({ outcome: "dead", error: "invalid webhook config" }));
    const config = parsed.data;
    const batched = (config.batch_size ?? 1) > 1;
    const body = batched ? `[${attempts.map((a) => a.body).join(",")}]` : attempts[0]!.body;
    const id = batched ? `batch_${hashIds(attempts)}` : attempts[0]!.eventId;
    const timestamp = Math.floor(Date.now() / 1000);
    const headers: Record<string, string> = {
      ...(config.headers ?? {}),
      "content-type": "application/json",
      "user-agent": "pg-outbox",
      "webhook-id": id,
      "webhook-timestamp": String(timestamp),
    };
    if (config.secret) headers["webhook-signature"] = webhookSignature(config.secret, id, timestamp, body);
    const outcome = await this.send(config, headers, body);
    return attempts.map(() => outcome);
  }

  private async send(config: WebhookConfig, headers: Record<string, string>, body: string): Promise<DeliveryOutcome> {
    const timeout = config.timeout_ms ?? 10_000;
    try {
      const response = await request(config.url, {
        method: "POST",
        headers,
        body,
        dispatcher: this.agent,
        headersTimeout: timeout,
        bodyTimeout: timeout,
        signal: AbortSignal.timeout(timeout),
        maxRedirections: 0,
      });
      const snippet = await readSnippet(response.body);
      const status = response.statusCode;
      if (status >= 200 && status < 300) return { outcome: "delivered", status };
      const error = `HTTP ${status}${snippet ? `: ${snippet}` : ""}`;
      if (status === 410) return { outcome: "dead", status, error, deactivate: "webhook answered 410 Gone" };
      if (status === 408 || status === 429 || status >= 500) {
        const wait = retryAfterMs(response.headers["retry-after"]);
        return { outcome: "retry", status, error, ...(wait === undefined ? {} : { retryAfterMs: wait }) };
      }
      return { outcome: "dead", status, error };
    } catch (error) {
      return { outcome: "retry", error: errorText(error) };
    }
  }

  async close(): Promise<void> {
    await this.agent.close();
  }
}

function hashIds(attempts: DeliveryAttempt[]): string {
  return createHmac("sha256", "pg-outbox-batch").update(attempts.map((a) => a.eventId).join(",")).digest("hex").slice(0, 32);
}

async function readSnippet(body: AsyncIterable<Buffer> & { destroy?: () => void }): Promise<string> {
  let size = 0;
  const chunks: Buffer[] = [];
  for await (const chunk of body) {
    size += chunk.length;
    if (size <= MAX_RESPONSE_BYTES) chunks.push(chunk);
    else {
      body.destroy?.();
      break;
    }
  }
  return Buffer.concat(chunks).toString("utf8").replace(/\s+/g, " ").slice(0, 200);
}
