/**
 * What a webhook's answer means for the delivery (README, "Webhooks": outcomes table).
 */
import type { DeliveryOutcome } from "./transport.js";

/** Longest wait a `Retry-After` header can ask for. */
export const MAX_RETRY_AFTER_MS = 3_600_000;
/** Shortest: `Retry-After: 0` would otherwise spend every attempt within a second. */
export const MIN_RETRY_AFTER_MS = 1000;

/**
 * Statuses below 500 that are retried: 408 Request Timeout, 429 Too Many Requests and 425 Too
 * Early say "later" by definition; 409 Conflict and 423 Locked usually mean the receiver is
 * busy with the same resource, which passes.
 */
const RETRIED_4XX = new Set([408, 409, 423, 425, 429]);

/** A `Retry-After` value (delay-seconds or an HTTP date) in ms, within [1 s, 1 h]; undefined when absent or unreadable. */
export function retryAfterMs(header: string | string[] | undefined, now = Date.now()): number | undefined {
  const value = (Array.isArray(header) ? header[0] : header)?.trim();
  if (!value) return undefined;
  const ms = /^\d+$/.test(value) ? Number(value) * 1000 : Date.parse(value) - now;
  if (!Number.isFinite(ms)) return undefined;
  return Math.min(Math.max(ms, MIN_RETRY_AFTER_MS), MAX_RETRY_AFTER_MS);
}

/** A redirect target for the error message: origin and path only (a query may carry tokens). */
function safeLocation(location: string | string[] | undefined, base: string): string {
  const value = Array.isArray(location) ? location[0] : location;
  if (!value) return "";
  try {
    const url = new URL(value, base);
    return ` to ${url.origin}${url.pathname}`.slice(0, 200);
  } catch {
    return "";
  }
}

/** The answer of one webhook request. */
export interface WebhookAnswer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  /** Start of the response body, already redacted and shortened. */
  snippet: string;
  /** The subscription's URL (to resolve a relative Location). */
  url: string;
}

/**
 * The outcome of a response: 2xx delivered; 408, 409, 423, 425, 429 and 5xx retry (honouring
 * Retry-After); 3xx dead (redirects are not followed); 410 dead and the subscription is
 * deactivated; any other 4xx dead.
 */
export function webhookOutcome(answer: WebhookAnswer, subscription: string): DeliveryOutcome {
  const { status, snippet } = answer;
  if (status >= 200 && status < 300) return { outcome: "delivered", status };
  const error = `HTTP ${status}${snippet ? `: ${snippet}` : ""}`;
  if (status >= 300 && status < 400) {
    const where = safeLocation(answer.headers.location, answer.url);
    return {
      outcome: "dead",
      status,
      error: `HTTP ${status} redirect${where}: redirects are not followed; point the subscription at the final URL`,
    };
  }
  if (status === 410) {
    return {
      outcome: "dead",
      status,
      error,
      deactivate: `the webhook answered 410 Gone (the endpoint asked to receive no more events); after fixing it: update outbox.subscriptions set active = true where name = '${subscription}'`,
    };
  }
  if (status >= 500 || RETRIED_4XX.has(status) || status < 200) {
    const wait = retryAfterMs(answer.headers["retry-after"]);
    return { outcome: "retry", status, error, ...(wait === undefined ? {} : { retryAfterMs: wait }) };
  }
  return { outcome: "dead", status, error };
}

/**
 * Replaces every occurrence of the given secrets in `text` (a receiver that echoes the
 * request back must not get a signature or an Authorization header into `last_error`).
 * Values shorter than 6 characters are left alone: they are no secret, and replacing them
 * would garble the text.
 */
export function redact(text: string, secrets: Iterable<string>): string {
  let out = text;
  for (const secret of secrets) {
    if (secret.length >= 6) out = out.split(secret).join("[redacted]");
  }
  return out;
}
