import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { run, type Runner } from "graphile-worker";
import type { Sql } from "postgres";
import { deliveryRecoverExpired, deliveryReleaseHeld } from "../db/deliveries.js";
import { subscriptionList } from "../db/subscriptions.js";
import { workerIdleSet, workerRegister, workerRemove } from "../db/workers.js";
import { Deliverer } from "../delivery/deliverer.js";
import { Dispatcher } from "../dispatch/dispatcher.js";
import type { Logger } from "../logger.js";
import { pruneOnce } from "../maintenance/retention.js";
import { ObservedTransport } from "../metrics/observedTransport.js";
import { WorkerHttpServer } from "../metrics/workerHttpServer.js";
import type { HandlerTransport } from "../transports/handler.js";
import { NotifyTransport } from "../transports/notify.js";
import type { Transport } from "../transports/transport.js";
import { WebhookTransport, type WebhookTransportOptions } from "../transports/webhook.js";
import { renewingClient } from "../db/renewingClient.js";
import { ANSWER_WITHIN_MS, settleWithin } from "../db/settleWithin.js";
import { graphileLogger } from "./graphileLogger.js";
import { LateWriterWatch } from "./lateWriterWatch.js";
import { workerClientOptions } from "./workerClientOptions.js";

/** A round with fewer events than this is small: an idle worker that read it stays idle, and reads again only when woken. */
const SMALL_ROUND = 100;
/**
 * A busy worker's round with fewer events than this (at {@link BUSY_MIN_RATE} or more) is
 * followed by `busyWaitMs` of gathering; a larger one means the worker is behind, and it
 * reads again at once. Pausing only after rounds below 100, as before, a steady stream made
 * rounds alternate: one large after each pause, then one of the few events that came during
 * it, read at once. Pausing after both halved the rounds (270 to 158 in 10 s beside
 * saturating writers) and took about 15% off the worker's CPU per event.
 */
const BEHIND_ROUND = 500;
/**
 * Events per second below which a busy worker does not pause to gather: it reads again at
 * once, finds the stream thin, and goes idle, so that each write wakes it again. Without
 * this floor, writes every 20 ms kept a worker busy for good (each 50 ms pause gathered two
 * or three events, enough to pause again), and their latency went from 4 to 30 ms at p50.
 * At this rate a pause saves about ten rounds per 50 ms window, worth its latency.
 */
const BUSY_MIN_RATE = 200;

/**
 * Whether a busy worker lets writes gather for `busyWaitMs` after a round that read `events`
 * that came in over `sinceLastRoundMs`: only in a stream (two events or more, at
 * {@link BUSY_MIN_RATE} or more; sparse writes keep their latency), and only while neither
 * the round nor what the pause would gather at that rate reaches {@link BEHIND_ROUND}. A
 * backlog, or a burst (the first round of 5,000 events from bulk inserts found a few
 * hundred), is read without a pause.
 */
function busyPauseDue(events: number, sinceLastRoundMs: number, busyWaitMs: number): boolean {
  const rate = (events * 1000) / Math.max(1, sinceLastRoundMs);
  const gathered = (rate * busyWaitMs) / 1000;
  return busyWaitMs > 0 && events >= 2 && rate >= BUSY_MIN_RATE && Math.max(events, gathered) < BEHIND_ROUND;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Options of a worker process (validated by createOutbox). */
export interface WorkerOptions {
  connectionString: string;
  logger: Logger;
  handlers: HandlerTransport;
  /** Pool of pg-outbox's own queries; default 4. Total connections = this + 2 (dispatcher, listener) + graphilePoolSize. */
  poolSize: number;
  /** graphile-worker's pool; default 2 (one listens, one runs jobs). */
  graphilePoolSize: number;
  /** Safety-net poll when no wake-up arrives; default 1000 ms. */
  pollIntervalMs: number;
  /** Lease of a claimed delivery; default 30000 ms. */
  leaseMs: number;
  /** How long an idle mark lasts without refresh; default 15000 ms. */
  idleTtlMs: number;
  /** While busy, the pause before reading again after a small round; default 50 ms (see createOutbox's `worker.busyWaitMs`). */
  busyWaitMs: number;
  /** How long a dispatch round waits for this worker's handlers; default 10 ms (see createOutbox's `worker.settleWithinMs`). */
  settleWithinMs: number;
  /** How long stop() waits for in-flight deliveries; default 10000 ms. */
  drainTimeoutMs: number;
  /** Retention of delivered deliveries and their events; default 7 days. */
  retentionMs: number;
  /** Retention of dead deliveries; default 30 days. */
  deadRetentionMs: number;
  /** Extra transports (tests, future brokers). */
  transports?: Transport[];
  /** Webhook address policy and failing-endpoint deactivation; defaults in {@link WebhookTransportOptions}. */
  webhooks?: WebhookTransportOptions;
  /** Port of `/healthz` and `/metrics` (0: any free port); default none, no HTTP server. */
  httpPort?: number;
  /** Address the HTTP server binds; default all interfaces. */
  httpHost?: string;
}

/** A running worker. */
export interface OutboxWorker {
  /** This worker's id (`outbox._workers.id`). */
  readonly id: string;
  /** Runs dispatch and delivery now (also what wake-ups and polls do). */
  kick(): void;
  /** Stops claiming, drains in-flight deliveries, releases everything. Idempotent. */
  stop(): Promise<void>;
  /** Resolves when the worker stopped. */
  readonly stopped: Promise<void>;
  /** The port serving `/healthz` and `/metrics`, when `httpPort` was given. */
  readonly httpPort: number | undefined;
}

/**
 * Starts a worker: one process's dispatcher candidate, deliverer, wake-up listener and
 * graphile-worker runner (cron maintenance and wake-up tasks). The hot path does not go
 * through graphile-worker jobs: a NOTIFY wakes the process and it dispatches and delivers
 * directly, without a job hand-off (measured by `npm run bench -- --part delivery`).
 */
export async function startWorker(options: WorkerOptions): Promise<OutboxWorker> {
  const id = `${hostname()}-${process.pid}-${randomBytes(3).toString("hex")}`;
  const logger = options.logger.child({ component: "worker", workerId: id });
  const client = renewingClient(
    options.connectionString,
    {
      ...workerClientOptions,
      max: options.poolSize,
      // The worker's own transactions (claims, outcomes) need not wait for the WAL flush: a
      // crash of PostgreSQL may forget the last few, which only means an attempt is made
      // again (at-least-once); events themselves are written by the app's synchronous
      // commits. This takes a disk flush off every step of the hot path.
      connection: { application_name: "pg-outbox worker", synchronous_commit: "off" },
    },
    {
      logger: logger.child({ component: "connections" }),
      // A wake-up or subscription change sent while the listener was away was missed: read
      // now. (Only called once listening has started, after everything below exists.)
      onRelisten: () => {
        void reloadSubscriptions().catch(() => undefined);
        wake();
      },
    },
  );
  const sql: Sql = client.sql;
  const dispatcher = new Dispatcher({ connectionString: options.connectionString, logger: logger.child({ component: "dispatch" }) });
  const transports: Transport[] = [
    options.handlers,
    new NotifyTransport({ sql, logger }),
    new WebhookTransport({ sql, logger: logger.child({ component: "webhook" }) }, options.webhooks),
    ...(options.transports ?? []),
  ];
  const http = options.httpPort === undefined ? undefined : new WorkerHttpServer({ connectionString: options.connectionString, logger: logger.child({ component: "http" }), workerId: id });
  const deliverer = new Deliverer({
    sql,
    workerId: id,
    transports: http ? transports.map((t) => new ObservedTransport(t, http.metrics)) : transports,
    logger: logger.child({ component: "delivery" }),
    leaseMs: options.leaseMs,
    settleWithinMs: options.settleWithinMs,
    // Recorded outcomes can free capacity, unblock an ordered key or leave a retry: claim
    // then. Otherwise they make nothing new claimable, and a round would only cost.
    onSettled: () => {
      if (deliverer.claimsRequested) void tick(false);
    },
  });

  let stopping = false;
  let ticking: Promise<void> | undefined;
  let again = false;
  // Whether the next round reads events. Claims alone (an outcome recorded, a 'deliver'
  // wake-up, a claim that found work) cost one small query per subscription; a dispatch round
  // costs several times that, and only writes, polls and the worker's own stream need one.
  let dispatchWanted = false;
  let idle = false;
  let idleRefreshedAt = 0;
  // When the last dispatch round started: the events a round finds came in since then.
  let lastRoundAt = 0;
  let lastRecoverAt = 0;
  let errorsInRow = 0;
  let idleWrite: Promise<void> = Promise.resolve();
  // Writers that asked for an idle worker before this one said it was idle, and commit after
  // its last read: a read when they end (see lateWriterWatch.ts).
  const lateWriters = new LateWriterWatch({
    sql,
    pollIntervalMs: options.pollIntervalMs,
    onEnded: () => {
      if (idle) void tick();
    },
    logger,
  });

  const setIdle = (value: boolean) => {
    const now = Date.now();
    if (value === idle && (!value || now - idleRefreshedAt < options.idleTtlMs / 3)) return;
    if (!value) lateWriters.stop();
    idle = value;
    if (value) idleRefreshedAt = now;
    // Serialized so that a late "busy" never overtakes an "idle" written after it.
    idleWrite = idleWrite
      .then(() => settleWithin(workerIdleSet(sql, id, value ? options.idleTtlMs : null), ANSWER_WITHIN_MS))
      .catch((error) => logger.warn({ err: error }, "could not update idle mark"));
  };

  const reloadSubscriptions = async () => {
    deliverer.setSubscriptions(await subscriptionList(sql));
    deliverer.requestClaims(); // a subscription activated or changed may have due deliveries
  };

  // Reads until a round finds nothing, then marks the worker idle and reads once more: a
  // write that committed before the mark was visible did not notify, and must not wait for
  // the poll. A busy worker is never notified; it finds new work by reading.
  const tick = (dispatch = true): Promise<void> => {
    if (stopping) return Promise.resolve();
    if (dispatch) dispatchWanted = true;
    if (ticking) {
      again = true;
      return ticking;
    }
    ticking = runTick().finally(() => {
      ticking = undefined;
    });
    return ticking;
  };
  const runTick = async (): Promise<void> => {
    // Rounds in this tick that found work. A single one (a lone write woke an idle worker)
    // leaves the idle mark alone: the next write may as well wake it too, and the mark is not
    // rewritten twice per event at low rates. Two in a row mean a stream of writes: then the
    // worker says it is busy, and writers stop notifying.
    let busyRounds = 0;
    try {
      for (;;) {
        again = false;
        const dispatching = dispatchWanted;
        dispatchWanted = false;
        const sinceLastRound = performance.now() - lastRoundAt;
        if (dispatching) lastRoundAt = performance.now();
        const round = dispatching
          ? await dispatcher.runUntilCaughtUp(
              () => deliverer.dispatchClaimRequest(),
              (r, committed) => deliverer.startClaimed(r.claimed, committed),
            )
          : null;
        const events = round?.events ?? 0;
        http?.metrics.dispatchRan(round?.rounds ?? 0, events);
        // Deliveries dispatch wrote without claiming them for this worker: someone must claim them.
        if (round && round.deliveries > round.claimed) deliverer.requestClaims();
        const claimed = await deliverer.pumpAll();
        // After dispatch, so that a wake-up's first round is not kept waiting.
        if (Date.now() - lastRecoverAt > Math.min(5000, options.leaseMs / 2)) {
          lastRecoverAt = Date.now();
          const recovered = await settleWithin(deliveryRecoverExpired(sql), ANSWER_WITHIN_MS);
          if (recovered > 0) {
            logger.warn({ recovered }, "took over deliveries whose lease expired");
            deliverer.requestClaims();
          }
        }
        if (stopping) break;
        if (events > 0 || claimed > 0) {
          if (idle && ++busyRounds >= 2) setIdle(false);
          // A busy worker in a stream: let the next writes gather rather than pay a round for each.
          if (!idle && busyPauseDue(events, sinceLastRound, options.busyWaitMs)) await sleep(options.busyWaitMs);
          // While the idle mark is live, every write committed after this round's snapshot
          // notifies (setting `again`): reading again only to find nothing would double the
          // cost of a lone write's round.
          if (idle && !again && !deliverer.claimsRequested && events < SMALL_ROUND) break;
          // A busy worker, or a large round: more events may be waiting, so read again. An idle
          // worker is woken by those (as above), and only claims again, without a dispatch round.
          if (events > 0 && (!idle || events >= SMALL_ROUND)) dispatchWanted = true;
          continue;
        }
        if (again) continue;
        if (!idle) {
          setIdle(true);
          await idleWrite;
          // Only the dispatcher reads events; other workers hear of their deliveries from its
          // rounds. Before the read: a writer that commits between the two is seen by neither.
          if (dispatcher.isDispatcher) await lateWriters.start();
          // Read and claim once more: deliveries another dispatcher wrote before the mark was
          // visible did not wake this worker.
          deliverer.requestClaims();
          dispatchWanted = true;
          continue;
        }
        break;
      }
      errorsInRow = 0;
    } catch (error) {
      errorsInRow++;
      logger.error({ err: error, errorsInRow }, "worker round failed; retrying");
      setTimeout(() => void tick(), Math.min(5000, 100 * 2 ** errorsInRow)).unref();
    }
  };
  // A poll or an outside request: dispatch, and claim whatever may be due. (Recorded outcomes
  // only claim for the subscriptions they may unblock: see the deliverer's onSettled.)
  const wake = () => {
    deliverer.requestClaims();
    void tick();
  };

  await workerRegister(sql, id, options.handlers.names());
  await reloadSubscriptions();
  // 'deliver' (dispatch left deliveries for other workers, redeliver, replay): claim, without
  // reading events (which that dispatch just did, and which a write's own wake-up asks for).
  // A plain wake-up comes from a write: the dispatcher reads, and hands this worker what it
  // claims.
  await client.listen("outbox_wake", (payload) => {
    if (payload !== "deliver") return void tick();
    deliverer.requestClaims();
    void tick(false);
  });
  await client.listen("outbox_subscriptions", () => {
    void reloadSubscriptions().then(wake, (error) => logger.error({ err: error }, "could not reload subscriptions"));
  });

  const runner: Runner = await run({
    connectionString: options.connectionString,
    maxPoolSize: options.graphilePoolSize,
    concurrency: 1,
    noHandleSignals: true,
    pollInterval: 2000,
    logger: graphileLogger(options.logger),
    taskList: {
      outbox_dispatch: async () => wake(),
      outbox_deliver: async () => wake(),
      outbox_maintain: async () => {
        const removed = await pruneOnce(sql, options.retentionMs, options.deadRetentionMs);
        if (removed > 0) logger.info({ removed }, "retention removed old deliveries and events");
      },
    },
    crontab: "* * * * * outbox_maintain ?max=1&jobKey=outbox_maintain",
  });

  // Its own timer, not the poll's: with a poll slower than the mark's lifetime the mark would
  // lapse, and writes stop waking this worker.
  const idleRefresh = setInterval(() => {
    if (idle) setIdle(true);
  }, options.idleTtlMs / 4);
  const poll = setInterval(() => {
    void reloadSubscriptions().catch(() => undefined);
    wake(); // the safety net: retries that came due, and anything a lost wake-up left
  }, options.pollIntervalMs);
  void tick();
  logger.info({ handlers: options.handlers.names() }, "worker started");

  let resolveStopped!: () => void;
  const stopped = new Promise<void>((resolve) => (resolveStopped = resolve));
  let stopPromise: Promise<void> | undefined;
  const stop = () =>
    (stopPromise ??= (async () => {
      stopping = true;
      clearInterval(poll);
      clearInterval(idleRefresh);
      lateWriters.stop();
      // A round still running may yet hand over deliveries it claimed: wait for it first.
      await ticking;
      const drained = await deliverer.drain(options.drainTimeoutMs);
      if (!drained) logger.warn("stopped before every in-flight delivery finished; their leases will expire and another worker retries them");
      const released = await settleWithin(deliveryReleaseHeld(sql, id), ANSWER_WITHIN_MS).catch(() => 0);
      if (released > 0) logger.info({ released }, "handed back deliveries claimed while stopping");
      deliverer.close();
      await idleWrite;
      await settleWithin(workerRemove(sql, id), ANSWER_WITHIN_MS).catch(() => undefined);
      await dispatcher.stop().catch(() => undefined);
      await runner.stop().catch(() => undefined);
      await http?.close();
      // Everything of ours has settled by now. A query still pending is one postgres.js
      // lost track of after its connection was terminated (it never settles; seen in the
      // connection-loss tests): waiting the usual 5 s for it only delays the exit.
      await client.end({ timeout: 1 });
      logger.info("worker stopped");
      resolveStopped();
    })());

  let httpPort: number | undefined;
  try {
    httpPort = options.httpPort === undefined ? undefined : await http?.listen(options.httpPort, options.httpHost);
  } catch (error) {
    await stop();
    throw error;
  }
  return { id, kick: wake, stop, stopped, httpPort };
}
