/** Durations as people write them in flags and environment variables. */

const units: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };

/** Explains the accepted forms, for error messages. */
export const DURATION_HINT = "a duration such as 500ms, 30s, 15m, 1h, 7d or 1h30m (a bare number is milliseconds)";

/**
 * Milliseconds of a duration: one or more number-unit pairs (`ms`, `s`, `m`, `h`, `d`, `w`),
 * as in `90s` or `1h30m`, or a bare whole number of milliseconds. Undefined when the text is
 * not one.
 */
export function durationMs(text: string): number | undefined {
  const value = text.trim();
  if (/^\d+$/.test(value)) return Number(value);
  if (!/^(\d+(ms|s|m|h|d|w))+$/.test(value)) return undefined;
  let ms = 0;
  for (const [, n, unit] of value.matchAll(/(\d+)(ms|s|m|h|d|w)/g)) ms += Number(n) * units[unit!]!;
  return ms;
}
