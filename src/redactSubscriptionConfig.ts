/**
 * What of a subscription's config may be shown: `outbox subscriptions` and
 * `Outbox.subscriptions()` print configs, and people paste that output into tickets and chats.
 */

/** Stands in for a redacted value. */
export const REDACTED = "[redacted]";

/**
 * A copy of `config` safe to print: each webhook signing secret becomes `whsec_…` (so it is
 * visible that one is set, and how many while rotating), header values (often
 * `Authorization`) become `[redacted]`, and so do the values of the URL's query string
 * (where tokens often travel). Other keys are kept as they are.
 */
export function redactSubscriptionConfig(config: Record<string, unknown>): Record<string, unknown> {
  const copy: Record<string, unknown> = { ...config };
  if (typeof copy.secret === "string") {
    copy.secret = copy.secret
      .split(" ")
      .filter(Boolean)
      .map(() => "whsec_…")
      .join(" ");
  } else if ("secret" in copy) {
    copy.secret = REDACTED;
  }
  if (copy.headers && typeof copy.headers === "object") {
    copy.headers = Object.fromEntries(Object.keys(copy.headers).map((name) => [name, REDACTED]));
  }
  if (typeof copy.url === "string") copy.url = redactUrlQuery(copy.url);
  return copy;
}

/** The URL with every query value replaced, and the fragment (never sent, but it may carry a token). */
function redactUrlQuery(url: string): string {
  const hashAt = url.indexOf("#");
  const base = hashAt < 0 ? url : url.slice(0, hashAt);
  const fragment = hashAt < 0 ? "" : `#${REDACTED}`;
  const queryAt = base.indexOf("?");
  if (queryAt < 0) return base + fragment;
  const query = base
    .slice(queryAt + 1)
    .split("&")
    .map((pair) => (pair.includes("=") ? `${pair.slice(0, pair.indexOf("="))}=${REDACTED}` : pair))
    .join("&");
  return `${base.slice(0, queryAt)}?${query}${fragment}`;
}
