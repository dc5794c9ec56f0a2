/**
 * `work`, or a rejection once `ms` pass without it settling. After its connection is cut,
 * postgres.js can leave a query that never settles (the dispatcher guards its own connection
 * the same way); the worker's loop must not wait on one forever. The abandoned promise's
 * eventual rejection is swallowed.
 */
export function settleWithin<T>(work: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer from PostgreSQL within ${ms} ms`)), ms);
  });
  work.catch(() => undefined);
  return Promise.race([work, timeout]).finally(() => clearTimeout(timer));
}
