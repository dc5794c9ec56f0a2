/**
 * The deliveries of one dispatch round that were written as delivered in its still-open
 * transaction (see `outbox._dispatch`'s p_settle): a fast in-process handler's delivery is
 * then written once, instead of inserted as delivering and updated when it returns. The round
 * waits a short while for their outcomes; whatever failed or is still running by then is put
 * back to delivering before the commit, and its outcome is recorded the usual way, but only
 * once the commit has been answered: recorded earlier, it would find no row to update.
 */
export class RoundSettlement {
  /** Unfinished attempts, by delivery id, with their subscription. */
  private readonly unfinished = new Map<string, string>();
  private readonly failed: string[] = [];
  private open = true;
  private allFinished: (() => void) | undefined;

  /** Adds a subscription's settled deliveries. */
  add(subscription: string, ids: readonly string[]): void {
    for (const id of ids) this.unfinished.set(id, subscription);
  }

  /**
   * Notes an attempt's outcome. Returns true when it is settled by the round (delivered while
   * the round waited): nothing more is recorded for it. Otherwise its outcome must be recorded
   * once the round's commit has been answered.
   */
  finished(id: string, delivered: boolean): boolean {
    if (!this.open || !this.unfinished.delete(id)) return false;
    if (!delivered) this.failed.push(id);
    if (this.unfinished.size === 0) this.allFinished?.();
    return delivered;
  }

  /**
   * Waits until every attempt finished, or `withinMs`. Returns the ids to put back to
   * delivering (failed or still running), and the subscriptions that had attempts still
   * running: their handlers are too slow to be waited for.
   */
  async close(withinMs: number): Promise<{ held: string[]; slow: Set<string> }> {
    // Handlers that return at once (or after promises already resolved) finish in the
    // microtasks before the next turn of the event loop: waiting for that turn first spares
    // them the timer. Armed and cleared on every round, the timer still woke the idle event
    // loop when its time came (seen with strace: one wake-up per round for nothing).
    if (this.unfinished.size > 0) await new Promise<void>((resolve) => setImmediate(resolve));
    if (this.unfinished.size > 0) {
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((resolve) => {
        this.allFinished = resolve;
        timer = setTimeout(resolve, withinMs);
      });
      clearTimeout(timer);
    }
    this.open = false;
    return { held: [...this.failed, ...this.unfinished.keys()], slow: new Set(this.unfinished.values()) };
  }
}
