import type { Sql } from "postgres";
import { transactionsInFlight } from "../db/workers.js";
import { ANSWER_WITHIN_MS, settleWithin } from "../db/settleWithin.js";
import type { Logger } from "../logger.js";

/** First check after the idle mark committed; each later one waits twice as long. */
const FIRST_CHECK_MS = 2;

/** Options of the {@link LateWriterWatch}. */
export interface LateWriterWatchOptions {
  sql: Sql;
  /** The worker's poll interval: checks stop once they would come no sooner than the poll. */
  pollIntervalMs: number;
  /** Called when some of the followed transactions have ended: their events may be committed now. */
  onEnded: () => void;
  logger: Logger;
}

/**
 * Catches the writes that raced this worker going idle. A writer asks whether some worker is
 * idle when its capture trigger runs, not when it commits: a transaction whose trigger ran
 * before the idle mark committed, and which commits after the worker's last read, sends no
 * wake-up, and its events would wait for the poll (seen: the last write of a burst, 1 s late).
 * Such a writer had its transaction id before the mark committed (the captured row was
 * written before the trigger asked), so it is in flight in a snapshot taken after the mark:
 * the watch follows those transactions and asks for a read whenever some of them end,
 * checking 2, 4, 8 … ms after the mark, until all have ended or the wait reaches the poll
 * interval (the poll covers the rest). One small query per check, and only when a worker
 * turns idle, never on the write path.
 *
 * Not covered, and left to the poll: a REPEATABLE READ or SERIALIZABLE writer whose snapshot
 * predates the mark but that wrote its first row after it.
 */
export class LateWriterWatch {
  private generation = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly options: LateWriterWatchOptions) {}

  /**
   * Follows the transactions in flight now; call once the idle mark has committed, and await
   * it before the worker's last read (a writer committing between that read and this
   * snapshot would be in neither). Replaces an earlier watch.
   */
  async start(): Promise<void> {
    this.stop();
    const generation = this.generation;
    try {
      const xids = await settleWithin(transactionsInFlight(this.options.sql), ANSWER_WITHIN_MS);
      if (generation === this.generation && xids.length > 0) this.check(generation, xids, FIRST_CHECK_MS);
    } catch (error) {
      this.options.logger.debug({ err: error }, "could not read transactions in flight; the poll covers them");
    }
  }

  /** Stops following (the worker is busy again, and reads anyway, or it stops). */
  stop(): void {
    this.generation++;
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private check(generation: number, xids: string[], delayMs: number): void {
    if (delayMs >= this.options.pollIntervalMs) return;
    this.timer = setTimeout(() => {
      void settleWithin(transactionsInFlight(this.options.sql, xids), ANSWER_WITHIN_MS).then(
        (still) => {
          if (generation !== this.generation) return;
          if (still.length < xids.length) this.options.onEnded();
          if (still.length > 0) this.check(generation, still, delayMs * 2);
        },
        (error: unknown) => this.options.logger.debug({ err: error }, "could not check transactions in flight; the poll covers them"),
      );
    }, delayMs);
    this.timer.unref();
  }
}
