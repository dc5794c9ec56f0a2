/**
 * Parsers for command-line arguments (commander's `argParser`): each throws commander's
 * InvalidArgumentError, which the command turns into exit code 2 with the option's name and
 * the reason.
 */
import { InvalidArgumentError } from "commander";
import { durationMs } from "../durationMs.js";

/** A whole number within [min, max]. */
export function wholeNumber(min: number, max: number): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (!/^\s*-?\d+\s*$/.test(value) || !Number.isSafeInteger(n) || n < min || n > max) {
      throw new InvalidArgumentError(`must be a whole number from ${min} to ${max}`);
    }
    return n;
  };
}

/** A comma-separated list, blanks dropped. */
export function commaList(value: string): string[] {
  return value
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
}

/** Collects repeated `name=value` options into an object (`--header Authorization='Bearer x'`). */
export function keyValue(value: string, previous: Record<string, string> = {}): Record<string, string> {
  const at = value.indexOf("=");
  if (at <= 0) throw new InvalidArgumentError(`expected name=value, e.g. --header "Authorization=Bearer …"`);
  const name = value.slice(0, at).trim();
  return { ...previous, [name]: value.slice(at + 1) };
}

/**
 * A point in time: an ISO 8601 time (`2026-12-01T10:00:00Z`, a date alone meaning its UTC
 * midnight), or a duration back from now (`90s`, `30m`, `1h`, `2d`, `1h30m`).
 */
export function sinceTime(value: string, now: Date = new Date()): Date {
  const text = value.trim();
  // A bare number is not taken as milliseconds here: "2026" would be a year to some.
  const ms = /^\d+$/.test(text) ? undefined : durationMs(text);
  if (ms !== undefined) return new Date(now.getTime() - ms);
  const time = /^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$/.test(text) ? Date.parse(text) : NaN;
  if (Number.isNaN(time)) {
    throw new InvalidArgumentError("must be an ISO 8601 time (2026-12-01T10:00:00Z) or a duration back from now such as 90s, 30m, 1h, 2d");
  }
  return new Date(time);
}
