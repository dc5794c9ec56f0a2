/**
 * The subscription pattern rule in TypeScript, for checks that run without a database
 * (`captureEvents` assertions, command-line input). It mirrors `outbox._pattern_regex` in
 * sql/100_subscriptions.sql; test/topicMatches.test.ts runs one table of cases through both.
 */

/** A valid pattern: dot-separated segments, each a literal, `*` or `**` (same check as SQL). */
export const PATTERN_SYNTAX = /^(\*\*|\*|[^.*\s]+)(\.(\*\*|\*|[^.*\s]+))*$/;

/** What a pattern looks like, for error messages. */
export const PATTERN_HINT =
  "patterns are dot-separated segments: a literal, * (one segment) or ** (any number), e.g. public.users.*, *.*.delete, order.**, or * for every event";

const cache = new Map<string, RegExp>();

function patternRegex(pattern: string): RegExp {
  let regex = cache.get(pattern);
  if (!regex) {
    // Each segment carries its own leading dot and is matched against "." + topic, so `**`
    // can match no segment at all.
    const body =
      pattern === "*"
        ? ".*"
        : pattern
            .split(".")
            .map((segment) =>
              segment === "*" ? "\\.[^.]+" : segment === "**" ? "(\\.[^.]+)*" : `\\.${segment.replace(/[\\^$.*+?()[\]{}|/-]/g, "\\$&")}`,
            )
            .join("");
    regex = new RegExp(`^${body}$`, "s");
    if (cache.size > 1000) cache.clear();
    cache.set(pattern, regex);
  }
  return regex;
}

/**
 * Whether `topic` matches `pattern`: `*` is one segment, `**` any number of segments, and the
 * pattern `*` alone matches every topic (`public.users.*`, `*.*.delete`, `order.**`).
 */
export function topicMatches(topic: string, pattern: string): boolean {
  return patternRegex(pattern).test(`.${topic}`);
}
