import type { Sql } from "postgres";
import { deliveryCompleteBatch, type DeliveryResult } from "../db/deliveries.js";
import { ANSWER_WITHIN_MS, settleWithin } from "../db/settleWithin.js";
import type { Logger } from "../logger.js";

/** Outcomes recorded per statement. */
const FLUSH_BATCH = 5000;

/** An attempt's outcome, with the subscription whose in-flight count it releases once recorded. */
export type RecordedOutcome = DeliveryResult & { subscription: string };

/** Options of the {@link OutcomeRecorder}. */
export interface OutcomeRecorderOptions {
  sql: Sql;
  workerId: string;
  logger: Logger;
  /** Called with each batch once it is recorded, or given up on after {@link OutcomeRecorder.close}. */
  onRecorded: (batch: RecordedOutcome[]) => void;
  /** Called after each flush, recorded or not. */
  afterFlush: () => void;
}

/**
 * Records attempts' outcomes in batches: those that finish in the same tick go in one
 * statement (`outbox._delivery_complete`), a backlog a few thousand at a time. A failed
 * statement is retried; the leases protect the deliveries meanwhile.
 */
export class OutcomeRecorder {
  private results: RecordedOutcome[] = [];
  private flushing: Promise<void> | undefined;
  private flushScheduled = false;
  private closed = false;

  constructor(private readonly options: OutcomeRecorderOptions) {}

  /**
   * Buffers outcomes and records them on the next tick, or on the tick after `after` resolves:
   * the deliveries of a dispatch round exist for the pool only once its commit is answered,
   * and recorded earlier the outcomes would find no row.
   */
  push(outcomes: RecordedOutcome[], after?: Promise<void>): void {
    if (outcomes.length === 0) return;
    if (after) {
      void after.then(() => this.push(outcomes));
      return;
    }
    this.results.push(...outcomes);
    this.scheduleFlush();
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => {
      this.flushScheduled = false;
      void this.flush();
    });
  }

  /** Records buffered outcomes (one batch; the rest follow on later ticks). */
  async flush(): Promise<void> {
    while (this.flushing) await this.flushing;
    if (this.results.length === 0) return this.options.afterFlush();
    const batch = this.results.splice(0, FLUSH_BATCH);
    if (this.results.length > 0) this.scheduleFlush();
    this.flushing = (async () => {
      try {
        await settleWithin(deliveryCompleteBatch(this.options.sql, this.options.workerId, batch), ANSWER_WITHIN_MS);
        this.options.onRecorded(batch);
      } catch (error) {
        if (this.closed) {
          // The pool is gone: the leases of these deliveries expire and they are retried.
          this.options.logger.warn({ err: error, count: batch.length }, "outcomes not recorded after stop");
          this.options.onRecorded(batch);
          return;
        }
        this.options.logger.error({ err: error, count: batch.length }, "could not record outcomes; retrying");
        this.results.unshift(...batch);
        await new Promise((r) => setTimeout(r, 200).unref());
        this.scheduleFlush();
      }
    })();
    await this.flushing;
    this.flushing = undefined;
    this.options.afterFlush();
  }

  /** Marks the pool closed: outcomes that fail to be recorded from now on are not retried. */
  close(): void {
    this.closed = true;
  }
}
