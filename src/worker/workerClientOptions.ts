import type { Options } from "postgres";

/**
 * postgres.js options shared by the worker's own clients (its pool and the dispatcher's
 * connection).
 *
 * `fetch_types: false`: with it on, postgres.js runs a catalog query on every new connection
 * and drops that query's promise; when the connection dies during it (a restart, a
 * terminated backend, a failover: exactly when a worker reconnects) the error surfaces as an
 * unhandled rejection, which ends a Node process by default (porsager/postgres #1192, #1223;
 * reproduced here by terminating the worker's backends). The cost: postgres.js cannot send or
 * parse arrays on these clients, so their queries pass arrays as JSON (`arrayParam`).
 */
export const workerClientOptions = {
  fetch_types: false,
  onnotice: () => undefined,
} satisfies Options<Record<string, never>>;
