import postgres, { type Sql } from "postgres";
import {
  dispatchLockRelease,
  dispatchLockTry,
  dispatchRoundRun,
  type DispatchClaimRequest,
  type DispatchRound,
} from "../db/dispatchState.js";
import { isConnectionError, OutboxError, sqlStateOf } from "../errors.js";
import type { Logger } from "../logger.js";
import { workerClientOptions } from "../worker/workerClientOptions.js";

/** Options of the {@link Dispatcher}. */
export interface DispatcherOptions {
  /** Connection string: the dispatcher keeps one session of its own for its lock. */
  connectionString: string;
  /** Events read per round; default 2000 (what a worker may hold per subscription, so that dispatch can claim a whole round). */
  maxEventsPerRound?: number;
  logger: Logger;
}

/**
 * One dispatcher at a time across all processes (DESIGN.md guarantee 7): the role is a
 * session-level advisory lock on a connection of the dispatcher's own, so it passes to
 * another process the moment this one's connection dies, without waiting on any job lock.
 * Rounds run on that same connection (a pool of one); if it closes, the lock is assumed lost,
 * and a query still pending on it is abandoned rather than awaited: postgres.js may never
 * settle it, which would freeze the worker.
 */
export class Dispatcher {
  private readonly client: Sql;
  private holding = false;
  private closed = closedSignal();
  private readonly maxEvents: number;
  private readonly logger: Logger;

  constructor(options: DispatcherOptions) {
    this.maxEvents = options.maxEventsPerRound ?? 2000;
    this.logger = options.logger;
    this.client = postgres(options.connectionString, {
      ...workerClientOptions,
      max: 1,
      idle_timeout: 0,
      max_lifetime: null,
      onclose: () => {
        if (this.holding) this.logger.warn("dispatcher connection closed: dispatcher role released");
        this.holding = false;
        this.closed.fire();
        this.closed = closedSignal();
      },
      // Asynchronous commit, as for the worker's pool: a dispatch round forgotten by a crash
      // of PostgreSQL is read again (its deliveries and cursor were one transaction).
      connection: { application_name: "pg-outbox dispatcher", synchronous_commit: "off" },
    });
  }

  /**
   * Runs rounds until caught up, if this process holds or can take the dispatcher role.
   * Deliveries a round wrote already claimed for this worker go to `onClaimed` at once.
   * Returns the totals (without the claimed rows), or null when another process is the
   * dispatcher.
   */
  async runUntilCaughtUp(
    claim?: () => DispatchClaimRequest | undefined,
    onClaimed?: (round: DispatchRound) => void,
    maxRounds = 20,
  ): Promise<DispatchRound | null> {
    const total: DispatchRound = { events: 0, deliveries: 0, lastId: "0", claimed: [] };
    try {
      if (!this.holding) {
        this.holding = await this.guarded(dispatchLockTry(this.client));
        if (!this.holding) return null;
        this.logger.info("this process is now the dispatcher");
      }
      for (let round = 0; round < maxRounds; round++) {
        const result = await this.guarded(dispatchRoundRun(this.client, this.maxEvents, claim?.()));
        total.events += result.events;
        total.deliveries += result.deliveries;
        total.lastId = result.lastId;
        if (result.claimed.length > 0) onClaimed?.(result);
        if (result.events < this.maxEvents / 2) break;
      }
      return total;
    } catch (error) {
      // 40001: another session dispatched concurrently (a lock lost unnoticed); the state
      // row lock and the snapshot make that safe, and the next round reads again.
      if (sqlStateOf(error) === "40001") return total;
      if (isConnectionError(error)) this.holding = false;
      throw error;
    }
  }

  /** Gives up the dispatcher role and closes the connection. */
  async stop(): Promise<void> {
    if (this.holding) await this.guarded(dispatchLockRelease(this.client)).catch(() => undefined);
    this.holding = false;
    await this.client.end({ timeout: 1 }); // see the stop of src/worker/worker.ts
  }

  /** `work`, or a rejection as soon as the connection closes. */
  private guarded<T>(work: Promise<T>): Promise<T> {
    work.catch(() => undefined); // abandoned work must not become an unhandled rejection
    return Promise.race([work, this.closed.promise]);
  }
}

/** A promise that rejects when `fire()` is called (the dispatcher's connection closed). */
function closedSignal(): { promise: Promise<never>; fire: () => void } {
  let fire!: () => void;
  const promise = new Promise<never>((_, reject) => {
    fire = () => reject(new OutboxError("database_unreachable", "dispatcher connection closed"));
  });
  promise.catch(() => undefined);
  return { promise, fire };
}
