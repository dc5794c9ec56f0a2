/**
 * The `webhook` kind: signed POSTs (Standard Webhooks) over a keep-alive pool per origin, with
 * a timeout that aborts, a bounded response read, an address policy checked on the address
 * actually dialled, and deactivation of endpoints that answer 410 or keep failing.
 */
import { createHash, createHmac } from "node:crypto";
import { Agent, buildConnector } from "undici";
import { AddressRefusedError } from "../errors.js";
import { AddressPolicy, type AddressPolicyOptions } from "./addressPolicy.js";
import { DEFAULT_DEACTIVATE_AFTER_FAILING_MS, EndpointHealth } from "./endpointHealth.js";
import type { DeliveryAttempt, DeliveryOutcome, Subscription, Transport, TransportContext } from "./transport.js";
import { errorText } from "./transport.js";
import { DEFAULT_TIMEOUT_MS, webhookConfigProblems, webhookConfigSchema } from "./webhookConfig.js";
import { redact, webhookOutcome } from "./webhookOutcome.js";
import { Deadlines, postWebhook, WebhookTimeoutError } from "./webhookRequest.js";

export { webhookConfigSchema, type WebhookConfig } from "./webhookConfig.js";

/** Options of the {@link WebhookTransport} (createOutbox's `webhooks` option). */
export interface WebhookTransportOptions extends AddressPolicyOptions {
  /**
   * An endpoint that has failed without a single success for this long is deactivated, with
   * `disabled_reason` saying so; 0 never deactivates. Default 3 days (259200000 ms).
   */
  deactivateAfterFailingMs?: number;
  /** Connections per origin in this worker; default 256. */
  connectionsPerOrigin?: number;
}

/** Characters of the response body kept in `last_error`. */
const SNIPPET_CHARS = 200;

/** A subscription's config, validated and turned into what each request needs. */
interface Prepared {
  url: string;
  origin: string;
  /** Path and query of the URL. */
  path: string;
  keys: Buffer[];
  headers: Record<string, string>;
  timeoutMs: number;
  batchSize: number;
  /** Strings that must never reach `last_error` or logs. */
  secrets: string[];
}

/**
 * The Standard Webhooks signature header: `v1,<base64 HMAC-SHA256 of id.timestamp.body>`,
 * one per secret (space-separated secrets during rotation), separated by spaces.
 */
export function webhookSignature(secrets: string, id: string, timestamp: number, body: string): string {
  return signWith(secrets.split(" ").map(secretKey), id, timestamp, body);
}

function secretKey(secret: string): Buffer {
  return Buffer.from(secret.replace(/^whsec_/, ""), "base64");
}

function signWith(keys: Buffer[], id: string, timestamp: number, body: string): string {
  return keys.map((key) => `v1,${createHmac("sha256", key).update(`${id}.${timestamp}.${body}`).digest("base64")}`).join(" ");
}

/**
 * The `webhook-id` of a batch: `batch_` and a hash of the event ids it carries, so the same
 * events retried together carry the same id (receivers deduplicate on it).
 */
export function webhookBatchId(eventIds: string[]): string {
  return `batch_${createHash("sha256").update([...eventIds].sort().join(",")).digest("hex").slice(0, 32)}`;
}

/**
 * The `webhook` kind. 2xx delivered; 408, 409, 423, 425, 429, 5xx, timeouts and connection
 * errors retry (Retry-After honoured, 1 s to 1 h); 3xx dead (redirects are not followed);
 * 410 dead and the subscription deactivated; other 4xx dead; a refused address dead.
 */
export class WebhookTransport implements Transport {
  readonly kind = "webhook";
  private readonly policy: AddressPolicy;
  private readonly agent: Agent;
  private readonly health: EndpointHealth;
  private readonly deadlines = new Deadlines();
  /** Keyed by the config object: the worker's subscription cache hands out new ones on reload. */
  private readonly prepared = new WeakMap<object, Prepared | string>();

  constructor(
    private readonly context: TransportContext,
    options: WebhookTransportOptions = {},
  ) {
    this.policy = new AddressPolicy(options);
    this.health = new EndpointHealth({
      sql: context.sql,
      logger: context.logger,
      deactivateAfterFailingMs: options.deactivateAfterFailingMs ?? DEFAULT_DEACTIVATE_AFTER_FAILING_MS,
    });
    // Names are resolved through the policy's lookup; literal IPs never reach a lookup, so
    // they are checked here before dialling.
    const connect = buildConnector({ lookup: this.policy.lookup });
    this.agent = new Agent({
      keepAliveTimeout: 30_000,
      connections: options.connectionsPerOrigin ?? 256,
      pipelining: 1,
      connect: (opts, callback) => {
        try {
          this.policy.checkLiteral(opts.hostname);
        } catch (error) {
          callback(error as Error, null);
          return;
        }
        connect(opts, callback);
      },
    });
  }

  batchSize(subscription: Subscription): number {
    const prepared = this.prepare(subscription);
    return typeof prepared === "string" ? 1 : prepared.batchSize;
  }

  serves(): boolean {
    return true;
  }

  async deliver(subscription: Subscription, attempts: DeliveryAttempt[]): Promise<DeliveryOutcome[]> {
    const prepared = this.prepare(subscription);
    if (typeof prepared === "string") return attempts.map(() => ({ outcome: "dead", error: prepared }));
    const batched = prepared.batchSize > 1;
    const body = batched ? `[${attempts.map((a) => a.body).join(",")}]` : attempts[0]!.body;
    const id = batched ? webhookBatchId(attempts.map((a) => a.eventId)) : attempts[0]!.eventId;
    const timestamp = Math.floor(Date.now() / 1000);
    const headers: Record<string, string> = {
      ...prepared.headers,
      "webhook-id": id,
      "webhook-timestamp": String(timestamp),
    };
    let secrets = prepared.secrets;
    if (prepared.keys.length > 0) {
      const signature = signWith(prepared.keys, id, timestamp, body);
      headers["webhook-signature"] = signature;
      secrets = [...secrets, ...signature.split(" ").map((s) => s.slice("v1,".length))];
    }
    let outcome = await this.send(subscription.name, prepared, headers, body, secrets);

    const failingSince = await this.health.record(subscription.name, outcome.outcome === "delivered");
    if (failingSince && outcome.outcome !== "delivered" && !outcome.deactivate) {
      const days = Math.round((this.health.period / 86_400_000) * 10) / 10;
      outcome = {
        ...outcome,
        deactivate:
          `the webhook endpoint has failed without a single success since ${failingSince.toISOString()} ` +
          `(the limit is ${days >= 1 ? `${days} days` : `${this.health.period} ms`}); last error: ${outcome.error.slice(0, 120)}; ` +
          `after fixing it: update outbox.subscriptions set active = true where name = '${subscription.name}'`,
      };
    }
    if (batched && outcome.outcome === "retry" && outcome.retryAfterMs === undefined) {
      // One wait for the whole batch (the same full-jitter rule as outbox._retry_delay), so
      // its events come due together and are retried as the same batch with the same id.
      const n = Math.max(...attempts.map((a) => a.attempt));
      outcome = { ...outcome, retryAfterMs: Math.round(Math.random() * Math.min(3600, 2 ** Math.min(n, 31)) * 1000) };
    }
    if (outcome.outcome !== "delivered") {
      this.context.logger.debug(
        { subscription: subscription.name, deliveryId: attempts[0]!.deliveryId, events: attempts.length, status: outcome.status, error: outcome.error },
        "webhook attempt failed",
      );
    }
    return attempts.map(() => outcome);
  }

  private async send(subscription: string, prepared: Prepared, headers: Record<string, string>, body: string, secrets: string[]): Promise<DeliveryOutcome> {
    try {
      const response = await postWebhook(this.agent, this.deadlines, {
        origin: prepared.origin,
        path: prepared.path,
        headers,
        body,
        timeoutMs: prepared.timeoutMs,
      });
      const status = response.status;
      if (status >= 200 && status < 300) return { outcome: "delivered", status };
      const text = redact(response.body.toString("utf8"), secrets).replace(/\s+/g, " ").trim().slice(0, SNIPPET_CHARS);
      const snippet = response.bodyCut && text === "" ? `(body not read: ${response.bodyCut})` : text;
      return webhookOutcome(
        { status, headers: { "retry-after": response.retryAfter, location: response.location }, snippet, url: prepared.url },
        subscription,
      );
    } catch (error) {
      if (error instanceof AddressRefusedError) return { outcome: "dead", error: `address refused: ${error.message}` };
      if (error instanceof WebhookTimeoutError) return { outcome: "retry", error: error.message };
      return { outcome: "retry", error: redact(connectionErrorText(error), secrets) };
    }
  }

  /** Validates a subscription's config once per config object; a string is what is wrong. */
  private prepare(subscription: Subscription): Prepared | string {
    const cached = this.prepared.get(subscription.config);
    if (cached) return cached;
    const parsed = webhookConfigSchema.safeParse(subscription.config);
    let prepared: Prepared | string;
    if (!parsed.success) {
      prepared = `invalid webhook config: ${webhookConfigProblems(subscription.config)}`;
    } else {
      const config = parsed.data;
      const secretList = config.secret ? config.secret.split(" ") : [];
      const custom = config.headers ?? {};
      const hasUserAgent = Object.keys(custom).some((h) => h.toLowerCase() === "user-agent");
      const url = new URL(config.url);
      prepared = {
        url: config.url,
        origin: url.origin,
        path: `${url.pathname}${url.search}`,
        keys: secretList.map(secretKey),
        headers: { ...(hasUserAgent ? {} : { "user-agent": "pg-outbox" }), ...custom, "content-type": "application/json" },
        timeoutMs: config.timeout_ms ?? DEFAULT_TIMEOUT_MS,
        batchSize: config.batch_size ?? 1,
        secrets: [...secretList, ...secretList.map((s) => s.slice("whsec_".length)), ...Object.values(custom), ...urlSecrets(config.url)],
      };
    }
    this.prepared.set(subscription.config, prepared);
    return prepared;
  }

  /** Called after the worker's drain: requests still open are aborted (their leases expire and they are retried). */
  async close(): Promise<void> {
    this.health.close();
    await this.agent.destroy();
  }
}

/** Credentials a URL may carry in its query (tokens): redacted wherever they could be echoed. */
function urlSecrets(url: string): string[] {
  try {
    return [...new URL(url).searchParams.values()];
  } catch {
    return [];
  }
}

/** A connection error as one line: undici's class and message, and the system code when there is one. */
function connectionErrorText(error: unknown): string {
  const code = (error as { code?: unknown }).code;
  const cause = (error as { cause?: unknown }).cause;
  const text = errorText(error, 250);
  const causeText = cause instanceof Error && !text.includes(cause.message) ? ` (${errorText(cause, 120)})` : "";
  return `${text}${causeText}${typeof code === "string" && !text.includes(code) ? ` [${code}]` : ""}`.slice(0, 300);
}
