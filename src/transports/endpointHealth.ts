/**
 * Tracks whether a subscription's endpoint keeps failing, so that one that has failed without
 * a single success for a long time (default 3 days) is deactivated instead of being retried
 * forever. The state lives in `outbox._subscription_health`, shared by all workers; each
 * worker writes it only when its view changes (at most once a second per subscription) and
 * otherwise refreshes it now and then, so the hot path stays free of extra writes.
 */
import type { Sql } from "postgres";
import { subscriptionHealthRecord } from "../db/subscriptionHealth.js";
import type { Logger } from "../logger.js";

/** Default period of failing without a success after which a webhook subscription is deactivated: 3 days. */
export const DEFAULT_DEACTIVATE_AFTER_FAILING_MS = 3 * 86_400_000;

/** Least time between two writes for one subscription, even when the endpoint flaps. */
const MIN_WRITE_GAP_MS = 1000;

interface State {
  /** What this worker last wrote: true = success. */
  written?: boolean;
  writtenAt: number;
  busy: boolean;
  /** The latest result seen, and a timer that writes it when a change arrived too soon after a write. */
  latest?: boolean;
  trailing?: NodeJS.Timeout;
}

/** Options of {@link EndpointHealth}. */
export interface EndpointHealthOptions {
  sql: Sql;
  logger: Logger;
  /** Failing without a success for this long deactivates; 0 never does. Default 3 days. */
  deactivateAfterFailingMs?: number;
}

/** Per-worker writer of endpoint health; see the module comment. */
export class EndpointHealth {
  private readonly states = new Map<string, State>();
  private readonly deactivateAfterMs: number;
  /** How often an unchanged state is written again (that is also how often the period is checked). */
  private readonly refreshMs: number;

  constructor(private readonly options: EndpointHealthOptions) {
    this.deactivateAfterMs = options.deactivateAfterFailingMs ?? DEFAULT_DEACTIVATE_AFTER_FAILING_MS;
    // A hundredth of the period, between 1 s and 1 min: the deactivation comes at most that late.
    this.refreshMs = this.deactivateAfterMs > 0 ? Math.min(60_000, Math.max(MIN_WRITE_GAP_MS, this.deactivateAfterMs / 100)) : 60_000;
  }

  /** The period after which a failing endpoint is deactivated (0: never). */
  get period(): number {
    return this.deactivateAfterMs;
  }

  /**
   * Records one request's result. Resolves to the time since which the endpoint has failed
   * without a success when that is longer ago than the period (deactivate it), else undefined.
   */
  async record(subscription: string, ok: boolean): Promise<Date | undefined> {
    const now = Date.now();
    let state = this.states.get(subscription);
    if (!state) this.states.set(subscription, (state = { writtenAt: -Infinity, busy: false }));
    state.latest = ok;
    const gap = state.written === ok ? this.refreshMs : MIN_WRITE_GAP_MS;
    if (state.busy || now - state.writtenAt < gap) {
      // A change that came too soon is written a moment later: a success must not be lost
      // when no request follows it (a stale failing_since would deactivate the endpoint later).
      if (state.written !== ok && !state.trailing) {
        const s = state;
        s.trailing = setTimeout(() => {
          s.trailing = undefined;
          if (s.latest !== undefined && s.latest !== s.written) void this.record(subscription, s.latest);
        }, Math.max(10, s.writtenAt + MIN_WRITE_GAP_MS - now));
        s.trailing.unref();
      }
      return undefined;
    }
    state.busy = true;
    try {
      const since = await subscriptionHealthRecord(this.options.sql, subscription, ok, this.deactivateAfterMs);
      state.written = ok;
      return since ?? undefined;
    } catch (error) {
      // Health is advisory: a lost write only delays a deactivation. Try again after a gap.
      this.options.logger.warn({ subscription, err: error }, "could not record endpoint health");
      return undefined;
    } finally {
      state.writtenAt = Date.now();
      state.busy = false;
    }
  }

  /** Stops pending trailing writes (the worker is stopping). */
  close(): void {
    for (const state of this.states.values()) clearTimeout(state.trailing);
  }
}
