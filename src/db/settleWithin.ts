import { NoAnswerError } from "../errors.js";

/**
 * How long the worker waits for an answer to one of its own queries before giving up on it
 * and trying again. Trying again is safe: claims skip what is leased, and an outcome applies
 * only to a delivery still leased to this worker.
 */
export const ANSWER_WITHIN_MS = 10_000;

/**
 * `work`, or a {@link NoAnswerError} once `ms` pass without it settling. After its
 * connection is cut, postgres.js can leave a query that never settles; the worker's loop must
 * not wait on one forever. The abandoned promise's eventual rejection is swallowed.
 */
export function settleWithin<T>(work: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new NoAnswerError(ms)), ms);
  });
  work.catch(() => undefined);
  return Promise.race([work, timeout]).finally(() => clearTimeout(timer));
}
