import type { Sql } from "postgres";
import {
  dispatchLockRelease,
  dispatchLockTry,
  dispatchRoundRun,
  type DispatchClaimRequest,
  type DispatchRound,
} from "../db/dispatchState.js";
import { isConnectionError, NoAnswerError, OutboxError, sqlStateOf } from "../errors.js";
import type { Logger } from "../logger.js";
import { workerClientOptions } from "../worker/workerClientOptions.js";
import { renewingClient, type RenewingClient } from "../db/renewingClient.js";
import { settleWithin } from "../db/settleWithin.js";

/** Options of the {@link Dispatcher}. */
export interface DispatcherOptions {
  /** Connection string: the dispatcher keeps one session of its own for its lock. */
  connectionString: string;
  /** Events read per round; default 2000 (a fifth of what a worker may hold per subscription, so that dispatch can claim whole rounds). */
  maxEventsPerRound?: number;
  /**
   * How long a query on the dispatcher's connection may go unanswered before the connection
   * is replaced; default 15000 ms. A round takes milliseconds; this only catches a query
   * postgres.js lost track of after its connection was cut, which never settles.
   */
  answerWithinMs?: number;
  logger: Logger;
}

/**
 * What {@link Dispatcher.runUntilCaughtUp} did: its rounds' totals, how many deliveries they
 * wrote already claimed for this worker, and how many rounds it ran (those that found nothing
 * included).
 */
export type DispatchTotal = Omit<DispatchRound, "claimed"> & { claimed: number; rounds: number };

/**
 * One dispatcher at a time across all processes (DESIGN.md guarantee 7): the role is a
 * session-level advisory lock on a connection of the dispatcher's own, so it passes to
 * another process the moment this one's connection dies, without waiting on any job lock.
 * Rounds run on that same connection (a pool of one); if it closes, the lock is assumed lost,
 * and a query still pending on it is abandoned rather than awaited: postgres.js may never
 * settle it, which would freeze the worker.
 */
export class Dispatcher {
  private readonly connection: RenewingClient;
  private holding = false;
  private closed = closedSignal();
  private readonly maxEvents: number;
  private readonly answerWithinMs: number;
  private readonly logger: Logger;

  constructor(options: DispatcherOptions) {
    this.maxEvents = options.maxEventsPerRound ?? 2000;
    this.answerWithinMs = options.answerWithinMs ?? 15_000;
    this.logger = options.logger;
    // Replaced, not reconnected, when it closes or a round gets no answer (see
    // src/db/renewingClient.ts). Ending the session is what releases the advisory lock, so the
    // role goes with it, and a round still waiting on the old one is abandoned.
    this.connection = renewingClient(
      options.connectionString,
      {
        ...workerClientOptions,
        max: 1,
        idle_timeout: 0,
        max_lifetime: null,
        connection: {
          application_name: "pg-outbox dispatcher",
          // Asynchronous commit, as for the worker's pool: a dispatch round forgotten by a
          // crash of PostgreSQL is read again (its deliveries and cursor were one transaction).
          synchronous_commit: "off",
          // A replaced connection's backend may still be running (waiting on a lock, say) and
          // holding the role's lock; this ends it soon after the worker gave up on it.
          statement_timeout: 2 * this.answerWithinMs,
        },
      },
      {
        logger: this.logger,
        endTimeout: 0,
        onRenew: () => {
          if (this.holding) this.logger.warn("dispatcher connection replaced: dispatcher role released");
          this.holding = false;
          this.closed.fire();
          this.closed = closedSignal();
        },
      },
    );
  }

  /** Whether this process holds the dispatcher role (as of its last round). */
  get isDispatcher(): boolean {
    return this.holding;
  }

  private get client(): Sql {
    return this.connection.sql;
  }

  /**
   * Runs rounds until caught up, if this process holds or can take the dispatcher role.
   * Deliveries a round wrote already claimed for this worker go to `onClaimed` at once (see
   * `dispatchRoundRun`: in a round that settles, while its transaction is open).
   * `committed` resolves once the round's commit has been answered, or given up on (after
   * which the rows may or may not exist): their outcomes may be recorded from then on.
   * Returns the totals, or null when another process is the dispatcher.
   */
  async runUntilCaughtUp(
    claim?: () => DispatchClaimRequest | undefined,
    onClaimed?: (round: DispatchRound, committed: Promise<void>) => Promise<string[]>,
    maxRounds = 20,
  ): Promise<DispatchTotal | null> {
    const total: DispatchTotal = { events: 0, deliveries: 0, lastId: "0", claimed: 0, rounds: 0 };
    try {
      if (!this.holding) {
        this.holding = await this.guarded(dispatchLockTry(this.client));
        if (!this.holding) return null;
        this.logger.info("this process is now the dispatcher");
      }
      for (let round = 0; round < maxRounds; round++) {
        let committed!: () => void;
        const commitAnswered = new Promise<void>((resolve) => (committed = resolve));
        const handOff = onClaimed && ((r: DispatchRound) => onClaimed(r, commitAnswered));
        const result = await this.guarded(dispatchRoundRun(this.client, this.maxEvents, claim?.(), handOff)).finally(committed);
        total.rounds++;
        total.events += result.events;
        total.deliveries += result.deliveries;
        total.lastId = result.lastId;
        total.claimed += result.claimed.length;
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
    await this.connection.end({ timeout: 1 }); // see the stop of src/worker/worker.ts
  }

  /**
   * `work`, or a rejection as soon as the connection closes or when no answer comes within
   * `answerWithinMs`; then the connection is replaced, so that a lost query does not keep it.
   */
  private guarded<T>(work: Promise<T>): Promise<T> {
    return settleWithin(Promise.race([work, this.closed.promise]), this.answerWithinMs).catch((error: unknown) => {
      if (error instanceof NoAnswerError) this.connection.renew(error.message);
      throw error;
    });
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
