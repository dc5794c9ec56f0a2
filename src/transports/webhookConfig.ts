/**
 * The config of a `webhook` subscription. `outbox._subscription_config_problem`
 * (sql/100_subscriptions.sql) checks the same rules on rows written by hand; keep both in
 * step (test/webhook.config.test.ts runs one table of configs through both).
 */
import { z } from "zod";

/** Default per-request timeout. */
export const DEFAULT_TIMEOUT_MS = 10_000;

/**
 * Headers pg-outbox sets itself or that would break the request framing: overriding them
 * would forge or break the signature, or desynchronise the connection. Any `webhook-*` name
 * is reserved too (Standard Webhooks owns that prefix).
 */
export const RESERVED_HEADERS = [
  "host",
  "content-length",
  "content-type",
  "content-encoding",
  "transfer-encoding",
  "connection",
  "keep-alive",
  "upgrade",
  "te",
  "trailer",
  "expect",
  "proxy-authorization",
  "proxy-connection",
] as const;

/** `whsec_` and the standard base64 of the key, padding only at the end. */
const SECRET = "whsec_[A-Za-z0-9+/]{16,}={0,2}";
/** One secret, or several separated by single spaces while a secret is being rotated. */
export const SECRET_PATTERN = new RegExp(`^${SECRET}( ${SECRET})*$`);
/** http(s)://, a host without forbidden characters (no user:password@), an optional port, then anything without whitespace. */
export const URL_PATTERN = /^https?:\/\/([^\s/?#@:<>\\^|%[\]]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?([/?#]\S*)?$/;
/** An HTTP header name (RFC 9110 token). */
export const HEADER_NAME_PATTERN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
/** Control characters other than tab are invalid in a header value (and would allow header injection). */
const HEADER_VALUE_FORBIDDEN = /[\x00-\x08\x0a-\x1f\x7f]/;
const MAX_HEADERS = 50;
const MAX_HEADER_VALUE = 8192;

/** What is wrong with one extra header, or undefined. Messages match the SQL check's. */
export function headerProblem(name: string, value: unknown): string | undefined {
  const lower = name.toLowerCase();
  if (!HEADER_NAME_PATTERN.test(name)) return `header name ${JSON.stringify(name)} is not a valid HTTP header name`;
  if ((RESERVED_HEADERS as readonly string[]).includes(lower) || lower.startsWith("webhook-")) {
    return `header ${name} is set by pg-outbox and cannot be overridden (reserved: ${RESERVED_HEADERS.join(", ")}, webhook-*)`;
  }
  if (typeof value !== "string") return `header ${name} must be a string`;
  if (value.length > MAX_HEADER_VALUE || HEADER_VALUE_FORBIDDEN.test(value)) {
    return `header ${name} must be at most ${MAX_HEADER_VALUE} characters without line breaks or control characters`;
  }
  return undefined;
}

const headersSchema = z.record(z.string(), z.string()).superRefine((headers, ctx) => {
  const names = Object.keys(headers);
  if (names.length > MAX_HEADERS) ctx.addIssue({ code: "custom", message: `must have at most ${MAX_HEADERS} headers` });
  const seen = new Set<string>();
  for (const name of names) {
    const problem = headerProblem(name, headers[name]);
    if (problem) ctx.addIssue({ code: "custom", message: problem, path: [name] });
    if (seen.has(name.toLowerCase())) {
      ctx.addIssue({ code: "custom", message: `header ${name} appears twice (header names are case-insensitive)`, path: [name] });
    }
    seen.add(name.toLowerCase());
  }
});

const urlSchema = z.string().superRefine((url, ctx) => {
  let parsed: URL | undefined;
  try {
    parsed = new URL(url);
  } catch {
    // reported below
  }
  if (parsed && (parsed.username || parsed.password)) {
    ctx.addIssue({ code: "custom", message: "must not carry user:password@; send credentials in headers (e.g. Authorization)" });
  } else if (!parsed || !URL_PATTERN.test(url) || Number(parsed.port || 0) > 65535) {
    ctx.addIssue({ code: "custom", message: "must be an http:// or https:// URL" });
  }
});

const wholeNumber = (min: number, max: number) =>
  z.number().int(`must be a whole number from ${min} to ${max}`).min(min, `must be a whole number from ${min} to ${max}`).max(max, `must be a whole number from ${min} to ${max}`);

/** Config of a `webhook` subscription (`outbox.subscriptions.config`). */
export const webhookConfigSchema = z.strictObject({
  /** The endpoint: an http:// or https:// URL; required. Redirects are not followed. */
  url: urlSchema,
  /**
   * Standard Webhooks signing secret `whsec_<base64 key>`; while rotating, several separated
   * by spaces (each request then carries one signature per secret). Default: unsigned.
   */
  secret: z
    .string()
    .regex(SECRET_PATTERN, "must be a string whsec_<base64> (at least 16 base64 characters), or several separated by single spaces")
    .optional(),
  /** Extra request headers (e.g. Authorization); default none. Reserved names are refused. */
  headers: headersSchema.optional(),
  /** Per-request timeout, covering connect, send and response; default 10000 ms. */
  timeout_ms: wholeNumber(100, 300_000).optional(),
  /** Events per request: 1 sends the envelope, more send a JSON array of up to this many; default 1. */
  batch_size: wholeNumber(1, 1000).optional(),
  /** Deliveries (events) in flight for this subscription across all workers; default: no limit but the worker's. */
  concurrency: wholeNumber(1, 10_000).optional(),
});

/** A validated webhook config. */
export type WebhookConfig = z.infer<typeof webhookConfigSchema>;

/** What is wrong with a webhook config, one `config.<key> <problem>` per issue; null when it is valid. */
export function webhookConfigProblems(config: unknown): string | null {
  const parsed = webhookConfigSchema.safeParse(config);
  if (parsed.success) return null;
  return parsed.error.issues.map((issue) => `config${issue.path.map((p) => `.${String(p)}`).join("")} ${issue.message}`).join("; ");
}
