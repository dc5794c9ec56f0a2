import type { Sql } from "postgres";
import { renewingClient } from "./db/renewingClient.js";
import { z } from "zod";
import { connectionStringSchema, describeIssues } from "./config.js";
import { captureDisable, captureEnable, captureList, type CaptureOptions, type CaptureRow } from "./db/captures.js";
import { captureEvents, type CapturedEvents } from "./captureEvents.js";
import { deliveryList, deliveryRedeliver, deliveryReplay, type DeliveryListFilter, type DeliveryRow } from "./db/deliveries.js";
import { eventEmit, eventListAfter, type EmitClient, type EventRow } from "./db/events.js";
import { migrate } from "./db/migrate.js";
import { statusRead, type OutboxStatus } from "./db/status.js";
import { subscriptionDelete, subscriptionListRows, subscriptionUpsert, type SubscriptionInput, type SubscriptionRow } from "./db/subscriptions.js";
import { redactSubscriptionConfig } from "./redactSubscriptionConfig.js";
import type { PatternEvent, TopicData, TopicMap, TopicName } from "./emittedEvent.js";
import { DEFAULT_DEACTIVATE_AFTER_FAILING_MS } from "./transports/endpointHealth.js";
import { HandlerTransport, type EventHandler } from "./transports/handler.js";
import { startWorker, type OutboxWorker } from "./worker/worker.js";
import { ConfigError } from "./errors.js";
import { silentLogger, type Logger } from "./logger.js";

const optionsSchema = z
  .object({
    connectionString: connectionStringSchema.optional(),
    sql: z.custom<Sql>((value) => typeof value === "function", "must be a postgres.js client").optional(),
    db: z
      .custom<{ $client: unknown }>((value) => typeof value === "object" && value !== null && "$client" in value, "must be a drizzle database")
      .optional(),
    maxConnections: z.number().int().min(2).max(1000).default(10),
    logger: z.custom<Logger>((value) => typeof value === "object" && value !== null && "child" in value).optional(),
    worker: z
      .strictObject({
        poolSize: z.number().int().min(2).max(100).default(4),
        graphilePoolSize: z.number().int().min(2).max(100).default(2),
        pollIntervalMs: z.number().int().min(10).max(60_000).default(1000),
        leaseMs: z.number().int().min(1000).max(3_600_000).default(30_000),
        idleTtlMs: z.number().int().min(1000).max(600_000).default(15_000),
        busyWaitMs: z.number().int().min(0).max(1000).default(50),
        settleWithinMs: z.number().int().min(0).max(1000).default(10),
        drainTimeoutMs: z.number().int().min(0).max(600_000).default(10_000),
        retentionMs: z.number().int().min(60_000).default(7 * 86_400_000),
        deadRetentionMs: z.number().int().min(60_000).default(30 * 86_400_000),
        httpPort: z.number().int().min(0).max(65_535).optional(),
        httpHost: z.string().min(1).optional(),
      })
      .prefault({}),
    webhooks: z
      .strictObject({
        allowPrivateNetworks: z.boolean().default(true),
        deactivateAfterFailingMs: z.number().int().min(0).default(DEFAULT_DEACTIVATE_AFTER_FAILING_MS),
      })
      .prefault({}),
  })
  .refine((o) => [o.connectionString, o.sql, o.db].filter(Boolean).length === 1, {
    message: "give exactly one of connectionString, sql or db",
  })
  .refine((o) => !o.db || typeof o.db.$client === "function", {
    message:
      "db must be a drizzle database on postgres.js (drizzle-orm/postgres-js); for another driver give connectionString, and pass your drizzle transactions to emit as they are",
  });

/** Options of {@link createOutbox}. */
export interface OutboxOptions {
  /** Connection string of the database; give this or `sql`. */
  connectionString?: string;
  /** An existing postgres.js client to share; give this, `db` or `connectionString`. It is not closed by `close()`. */
  sql?: Sql;
  /**
   * An existing drizzle database on postgres.js (`drizzle(client)` from drizzle-orm/postgres-js)
   * whose client pg-outbox shares; give this, `sql` or `connectionString`. Not closed by
   * `close()`. (Drizzle transactions on any driver can be passed to `emit` either way.)
   */
  db?: { $client: unknown };
  /** Pool size when pg-outbox opens its own client; default 10, at least 2 (migrate holds a lock on one). */
  maxConnections?: number;
  /** pino logger; default silent. */
  logger?: Logger;
  /** Worker settings, used by `start()`. */
  worker?: {
    /** Pool for pg-outbox's own queries; default 4. Connections of one worker: poolSize + 2 (dispatcher, listener) + graphilePoolSize. */
    poolSize?: number;
    /** graphile-worker's pool; default 2. */
    graphilePoolSize?: number;
    /** Safety-net poll interval; default 1000 ms (wake-ups make it rarely matter). */
    pollIntervalMs?: number;
    /** Lease of a claimed delivery: after a crash another worker retries it once this passes; default 30000 ms. */
    leaseMs?: number;
    /** Lifetime of a worker's idle mark (writes notify only while one is live); default 15000 ms. */
    idleTtlMs?: number;
    /**
     * While busy, how long the worker lets a small round's successors gather before reading
     * again; default 50 ms. Each round has a fixed cost (a dispatch transaction with its
     * snapshot and cursor, recording the outcomes, the round trips) of about 2-3 ms of CPU
     * here, so back-to-back rounds of a few events each take CPU from the writers: with a
     * worker delivering a stream of 2,400 single-row writes per second, its CPU per event
     * went from about 220 µs with 10 ms to 145 µs with 50 ms (PostgreSQL and Node together).
     * It applies only once the worker has marked itself busy (two rounds in a row found
     * work), and only after a round of 2 to 499 events that came at 200 to 10,000 per second:
     * a lone write, or a thinner stream, keeps its millisecond latency (the worker goes idle
     * and each write wakes it), and a backlog is read without pause. Under a steady stream,
     * it is what an event may wait on top of that; 0 reads again at once.
     */
    busyWaitMs?: number;
    /**
     * How long a dispatch round waits for this worker's handlers before it commits; default
     * 10 ms. The round writes the deliveries of handlers registered here as delivered, runs
     * them, and puts back to delivering only those that failed or are still running when the
     * wait ends: a handler that returns in time has its delivery written once, instead of
     * inserted and then updated (a quarter of the database time per delivered event, and one
     * statement per round fewer). Its `delivered_at` is then the round's time, a few
     * milliseconds before the handler returned, and during its first attempt the handler
     * cannot yet see its own row in `outbox.deliveries`. A subscription whose handler
     * outlasts the wait is not waited for in the next 10 s. 0 turns this off.
     */
    settleWithinMs?: number;
    /** How long stop() waits for in-flight deliveries; default 10000 ms. */
    drainTimeoutMs?: number;
    /** Delivered deliveries and fully delivered events are kept this long; default 7 days. */
    retentionMs?: number;
    /** Dead deliveries are kept this long; default 30 days. */
    deadRetentionMs?: number;
    /**
     * Serve `/healthz` and `/metrics` (Prometheus) on this port; 0 picks a free one
     * (`worker.httpPort` tells which). Default: off. It uses one more connection, opened at
     * the first request.
     */
    httpPort?: number;
    /** Address the HTTP server binds; default all interfaces. */
    httpHost?: string;
  };
  /** Webhook delivery settings of workers started by `start()`. */
  webhooks?: {
    /**
     * Whether webhooks may target loopback and private addresses (127/8, ::1, 10/8,
     * 172.16/12, 192.168/16, 100.64/10, fc00::/7); default true. Set false where people you
     * do not trust write subscriptions. Link-local and cloud metadata addresses
     * (169.254.0.0/16, fe80::/10, fd00:ec2::254) are refused either way.
     */
    allowPrivateNetworks?: boolean;
    /**
     * A webhook endpoint that has failed without a single success for this long is
     * deactivated (`disabled_reason` says why); 0 never deactivates. Default 3 days.
     */
    deactivateAfterFailingMs?: number;
  };
}

/** Options of a handler registered with {@link Outbox.handle}. */
export interface HandleOptions {
  /** jsonpath predicate over the envelope; default none. */
  filter?: string;
  /** Only this tenant's events; default all. */
  tenant?: string;
  /** Deliver the events of one key in commit order; default false. */
  ordered?: boolean;
  /** Attempts before dead; default 25. */
  maxAttempts?: number;
  /** Deliveries in flight across all workers; default unlimited. */
  concurrency?: number;
}

/**
 * The pg-outbox API on one database. `TTopics` maps the app's emitted topics to their payload
 * types (see {@link createOutbox}); default none, every topic's data `unknown`.
 */
export interface Outbox<TTopics extends TopicMap = Record<never, never>> {
  /** The postgres.js client in use. */
  readonly sql: Sql;
  /** Brings the `outbox` schema up to date; safe to run concurrently, idempotent. */
  migrate(): Promise<void>;
  /** Captures INSERT/UPDATE/DELETE of `table` as events (`outbox.enable_capture`). */
  enableCapture(table: string, options?: CaptureOptions): Promise<void>;
  /** Stops capturing `table`; events already written stay. */
  disableCapture(table: string): Promise<void>;
  /** Captured tables with their options and health. */
  captures(): Promise<CaptureRow[]>;
  /**
   * Writes an app event in `client`'s transaction (pass the transaction to make the event
   * atomic with your writes; pass `outbox.sql` for a standalone event). `client` may be a
   * postgres.js client or transaction, a drizzle database or transaction (postgres.js or
   * node-postgres driver), or a node-postgres client. Returns its id.
   * `data` must have the type the topic map gives `topic`; any data for a topic it lacks.
   */
  emit<TTopic extends TopicName<TTopics>>(client: EmitClient, topic: TTopic, data: TopicData<TTopics, TTopic>, options?: { key?: string }): Promise<string>;
  /** Committed events after a position (default the beginning), oldest first. */
  events(options?: { after?: string; limit?: number }): Promise<EventRow[]>;
  /**
   * Registers an in-process handler, durably: it creates or updates a `handler` subscription
   * named `name` (when the worker starts), so deliveries are retried and visible in SQL like
   * any other. Only workers that registered it claim its deliveries.
   *
   * The event's type: `TEvent` when given (e.g. an `InferCaptureEvent`); otherwise, for a
   * topic of the topic map, an `EmittedEvent` with that topic's `data` type, and for any other
   * pattern `OutboxEvent`.
   */
  handle<TEvent = never, TPattern extends string = string>(
    name: string,
    pattern: TPattern,
    fn: EventHandler<[TEvent] extends [never] ? PatternEvent<TTopics, TPattern> : TEvent>,
    options?: HandleOptions,
  ): void;
  /** Creates or updates a subscription row (the same as inserting it with SQL). */
  subscribe(input: SubscriptionInput): Promise<void>;
  /** Deletes a subscription and its deliveries; returns whether it existed. */
  unsubscribe(name: string): Promise<boolean>;
  /**
   * Every subscription with its state, by name. Configs are redacted for printing: signing
   * secrets show as `whsec_…`, header values and URL query values as `[redacted]` (read
   * `outbox.subscriptions` with SQL for the stored values).
   */
  subscriptions(): Promise<SubscriptionRow[]>;
  /** Deliveries, newest first, with their event's topic; default the latest 50 of every status and subscription. */
  deliveries(filter?: DeliveryListFilter): Promise<DeliveryRow[]>;
  /**
   * Puts dead or delivered deliveries back in line (`outbox.redeliver`), all or none: an
   * unknown id (code `not_found`) or one still in line (`invalid_input`) changes nothing.
   * Returns how many.
   */
  redeliver(deliveryIds: string | string[]): Promise<number>;
  /**
   * Replays a subscription's events since a time (`outbox.replay`): dead and delivered
   * deliveries go back in line, and matching events it missed while inactive get one.
   * Returns how many deliveries were put in line; an unknown subscription throws `not_found`.
   */
  replay(subscription: string, since: Date): Promise<number>;
  /**
   * Testing support: runs `block` and returns the events of every transaction that committed
   * while it ran, with assertions (`ofType`, `assertEmitted`, `assertNotEmitted`,
   * `assertCount`). Events of other connections committing meanwhile are included too: see
   * {@link captureEvents}.
   */
  captureEvents(block: () => Promise<unknown>): Promise<CapturedEvents>;
  /** Delivery status per subscription, dispatch lag and capture health (what `outbox status` prints). */
  status(): Promise<OutboxStatus>;
  /** Starts a worker in this process (dispatch, delivery, maintenance). */
  start(): Promise<OutboxWorker>;
  /** Closes the client if pg-outbox opened it (stop workers first). */
  close(): Promise<void>;
}

/**
 * Creates the pg-outbox API on a database. Options are validated: a bad one throws a
 * {@link ConfigError}.
 *
 * The optional type parameter maps the app's emitted topics to their payload types, so that
 * `emit` checks data and `handle` types `event.data` for those topics (other topics and
 * patterns stay allowed, with `unknown` data). It is a compile-time promise only: nothing
 * checks at run time that SQL's `outbox.emit` or an older version of the app kept it.
 *
 * ```ts
 * const outbox = createOutbox<{ "order.placed": { orderId: string } }>({ connectionString });
 * ```
 */
export function createOutbox<TTopics extends TopicMap = Record<never, never>>(options: OutboxOptions): Outbox<TTopics> {
  const parsed = optionsSchema.safeParse(options);
  if (!parsed.success) throw new ConfigError(`invalid createOutbox options: ${describeIssues(parsed.error)}`);
  const config = parsed.data;
  const logger = (config.logger ?? silentLogger()).child({ component: "outbox" });
  const shared = config.sql ?? (config.db?.$client as Sql | undefined);
  const owned = !shared;
  // A client of pg-outbox's own is replaced when a connection closes (src/db/renewingClient.ts).
  const sql: Sql =
    shared ??
    renewingClient(
      config.connectionString!,
      { max: config.maxConnections, onnotice: (notice) => logger.debug({ notice: notice.message }, "postgres notice") },
      { logger },
    ).sql;
  const handlers = new HandlerTransport();
  const handlerRows: SubscriptionInput[] = [];
  return {
    sql,
    migrate: () => migrate(sql),
    enableCapture: (table, captureOptions) => captureEnable(sql, table, captureOptions),
    disableCapture: (table) => captureDisable(sql, table),
    captures: () => captureList(sql),
    emit: (client, topic, data, emitOptions) => eventEmit(client, topic, data, emitOptions?.key),
    events: (listOptions) => eventListAfter(sql, listOptions?.after ?? "-1", listOptions?.limit ?? 100),
    handle(name, pattern, fn, handleOptions = {}) {
      handlers.register(name, fn as EventHandler);
      handlerRows.push({
        name,
        pattern,
        kind: "handler",
        config: handleOptions.concurrency ? { concurrency: handleOptions.concurrency } : {},
        filter: handleOptions.filter ?? null,
        tenant: handleOptions.tenant ?? null,
        ordered: handleOptions.ordered ?? false,
        maxAttempts: handleOptions.maxAttempts ?? 25,
      });
    },
    subscribe: (input) => subscriptionUpsert(sql, input),
    status: () => statusRead(sql),
    unsubscribe: (name) => subscriptionDelete(sql, name),
    subscriptions: async () =>
      (await subscriptionListRows(sql)).map((row) => ({ ...row, config: redactSubscriptionConfig(row.config) })),
    deliveries: (filter) => deliveryList(sql, filter),
    redeliver: (ids) => deliveryRedeliver(sql, typeof ids === "string" ? [ids] : ids),
    replay: (subscription, since) => deliveryReplay(sql, subscription, since),
    captureEvents: (block) => captureEvents(sql, block),
    async start() {
      const connectionString = config.connectionString ?? connectionStringOf(sql);
      for (const row of handlerRows) await subscriptionUpsert(sql, row);
      return startWorker({ connectionString, logger: config.logger ?? silentLogger(), handlers, ...config.worker, webhooks: config.webhooks });
    },
    async close() {
      if (owned) await sql.end({ timeout: 5 });
    },
  };
}

/** Rebuilds a connection string from a postgres.js client's options (the worker opens sessions of its own). */
function connectionStringOf(sql: Sql): string {
  const o = sql.options as unknown as { host: string[]; port: number[]; user: string; pass: string | null; database: string };
  const url = new URL(`postgres://${o.host[0] ?? "localhost"}:${o.port[0] ?? 5432}/${encodeURIComponent(o.database)}`);
  url.username = o.user;
  if (o.pass) url.password = o.pass;
  return url.toString();
}
