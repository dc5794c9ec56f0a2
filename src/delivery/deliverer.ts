import type { Sql } from "postgres";
import { deliveryClaimDue, deliveryLeaseExtend } from "../db/deliveries.js";
import type { DispatchClaimRequest, DispatchedClaim } from "../db/dispatchState.js";
import { subscriptionDeactivate } from "../db/subscriptions.js";
import type { Logger } from "../logger.js";
import type { DeliveryAttempt, DeliveryOutcome, Subscription, Transport } from "../transports/transport.js";
import { errorText } from "../transports/transport.js";
import { ANSWER_WITHIN_MS, settleWithin } from "../db/settleWithin.js";
import { OutcomeRecorder, type RecordedOutcome } from "./outcomeRecorder.js";
import { RoundSettlement } from "./roundSettlement.js";

/** How long a subscription whose handler outlasted `settleWithinMs` is not settled in rounds. */
const SLOW_SETTLE_PAUSE_MS = 10_000;

/** `last_error` of a delivery handed back because the subscription changed while it was claimed. */
const UNKNOWN_SUBSCRIPTION_ERROR = "not attempted: the subscription was renamed or deleted while its delivery was being claimed";

/** A batch of attempts waiting for a slot, and the round settling them, if any. */
interface QueuedBatch {
  attempts: DeliveryAttempt[];
  settlement?: RoundSettlement;
  /** Resolves once the rows of these attempts are committed: outcomes are recorded after it. */
  committed?: Promise<void>;
}

/** Options of the {@link Deliverer}. */
export interface DelivererOptions {
  sql: Sql;
  workerId: string;
  transports: Transport[];
  logger: Logger;
  /**
   * Lease of a claimed delivery; another worker takes it over after. The deliverer extends
   * the leases of what it holds every third of this, so only a worker that died or hangs
   * loses them. Default 30 s.
   */
  leaseMs?: number;
  /** Deliveries claimed per query; default 1000. */
  claimBatch?: number;
  /**
   * Deliveries claimed and not yet finished in this process, per subscription: the local
   * queue that keeps the transport busy between claims, counted until each outcome is
   * recorded. Default 10000: enough that the dispatching worker takes whole dispatch rounds
   * already claimed while its outcomes are being recorded, instead of leaving them pending
   * for a claim, which costs one more UPDATE per delivery (measured: pool CPU halved, events/s
   * up a fifth). A `concurrency` in the subscription's config caps it, across all workers.
   */
  maxHeldPerSubscription?: number;
  /** Transport calls running at once per subscription in this process; default 100. */
  concurrencyPerSubscription?: number;
  /**
   * How long a dispatch round waits, with its transaction open, for the in-process handlers
   * of the deliveries it wrote as delivered (see {@link RoundSettlement}); default 10 ms. 0
   * writes them as delivering and records outcomes afterwards, as for other transports. A
   * subscription whose handler outlasts it is not waited for in the next 10 s.
   */
  settleWithinMs?: number;
  /** Called after outcomes were recorded. */
  onSettled?: () => void;
}

/**
 * Claims due deliveries (per subscription, with a lease), hands them to the transport, and
 * records outcomes in batches. Each subscription is pumped on its own, so a slow or failing
 * endpoint only ever occupies its own in-flight slots (DESIGN.md guarantee 5).
 */
export class Deliverer {
  private subscriptions = new Map<string, Subscription>();
  private readonly transports: Map<string, Transport>;
  /** Claimed and unfinished, per subscription. */
  private readonly inFlight = new Map<string, number>();
  /** Transport calls running, per subscription. */
  private readonly running = new Map<string, number>();
  /** Claimed batches waiting for a free slot, per subscription. */
  private readonly queued = new Map<string, QueuedBatch[]>();
  /** Subscriptions not settled in dispatch rounds until the given time (their handlers were slow). */
  private readonly slowUntil = new Map<string, number>();
  private leaseTimer: NodeJS.Timeout | undefined;
  private readonly pumping = new Set<string>();
  private readonly repump = new Set<string>();
  /** Records outcomes; until it has, their deliveries still count as held by their subscription. */
  private readonly outcomes: OutcomeRecorder;
  private extending = false;
  private stopping = false;
  private closed = false;
  private readonly leaseMs: number;
  private readonly claimBatch: number;
  private readonly maxInFlight: number;
  private readonly concurrency: number;
  private readonly settleWithinMs: number;
  private idleWaiters: Array<() => void> = [];
  /**
   * Whether the next {@link pumpAll} claims for every served subscription, and which ones it
   * claims for otherwise. A claim that cannot find anything is skipped: while dispatch hands
   * this worker every delivery it writes, claiming after each round would cost a query and
   * an index probe per round for nothing (measured with a worker delivering a stream of
   * writes: one of three statements per round).
   */
  private claimAll = true;
  private readonly claimFor = new Set<string>();

  constructor(private readonly options: DelivererOptions) {
    this.transports = new Map(options.transports.map((t) => [t.kind, t]));
    this.leaseMs = options.leaseMs ?? 30_000;
    this.claimBatch = options.claimBatch ?? 1000;
    this.maxInFlight = options.maxHeldPerSubscription ?? 10_000;
    this.concurrency = options.concurrencyPerSubscription ?? 100;
    this.settleWithinMs = options.settleWithinMs ?? 10;
    this.outcomes = new OutcomeRecorder({
      sql: options.sql,
      workerId: options.workerId,
      logger: options.logger,
      onRecorded: (batch) => {
        for (const r of batch) this.inFlight.set(r.subscription, (this.inFlight.get(r.subscription) ?? 0) - 1);
        // Subscriptions that dispatch does not claim for, whose recorded outcomes make their
        // next deliveries claimable (ordered: the key's next event; a `concurrency` limit: a
        // free slot).
        for (const name of new Set(batch.map((r) => r.subscription))) {
          const sub = this.subscriptions.get(name);
          if (sub && (sub.ordered || sub.config.concurrency !== undefined)) this.claimFor.add(name);
        }
      },
      afterFlush: () => {
        if (!this.stopping) this.options.onSettled?.();
        this.notifyIdle();
      },
    });
    this.leaseTimer = setInterval(() => void this.extendLeases(), this.leaseMs / 3);
    this.leaseTimer.unref();
  }

  /**
   * Extends the leases this worker holds that run out within two thirds of a lease (one
   * statement; at most one at a time). Deliveries that finish quickly never need it, so it
   * touches only the long-running ones.
   */
  private async extendLeases(): Promise<void> {
    if (this.inFlightTotal === 0 || this.closed || this.extending) return;
    this.extending = true;
    try {
      await settleWithin(deliveryLeaseExtend(this.options.sql, this.options.workerId, this.leaseMs), ANSWER_WITHIN_MS);
    } catch (error) {
      this.options.logger.warn({ err: error }, "could not extend the leases of held deliveries");
    } finally {
      this.extending = false;
    }
  }

  /** Replaces the cached subscriptions (after a change notification). */
  setSubscriptions(subscriptions: Subscription[]): void {
    this.subscriptions = new Map(subscriptions.map((s) => [s.name, s]));
  }

  /** Subscriptions this worker delivers for. */
  served(): Subscription[] {
    return [...this.subscriptions.values()].filter((s) => s.active && this.transports.get(s.kind)?.serves(s));
  }

  /** Deliveries in flight in this process. */
  get inFlightTotal(): number {
    let total = 0;
    for (const n of this.inFlight.values()) total += n;
    return total;
  }

  /**
   * Marks deliveries as possibly claimable: for the given subscriptions, or for all (a wake-up,
   * a poll, deliveries dispatch did not claim for this worker, leases taken over). The next
   * {@link pumpAll} claims for them.
   */
  requestClaims(names?: Iterable<string>): void {
    if (!names) this.claimAll = true;
    else for (const name of names) this.claimFor.add(name);
  }

  /** Whether a claim was requested since the last {@link pumpAll}. */
  get claimsRequested(): boolean {
    return this.claimAll || this.claimFor.size > 0;
  }

  /**
   * Claims and starts deliveries for the served subscriptions that may have some due (see
   * {@link requestClaims}); returns how many were claimed.
   */
  async pumpAll(): Promise<number> {
    const subs = this.served().filter((s) => this.claimAll || this.claimFor.has(s.name));
    // Cleared before claiming, so that a request made meanwhile holds for the next round.
    this.claimAll = false;
    this.claimFor.clear();
    // One subscription's failing claim must not stop the others' (DESIGN.md guarantee 5).
    const counts = await Promise.all(
      subs.map((s) =>
        this.pump(s.name).catch((error: unknown) => {
          this.claimFor.add(s.name);
          this.options.logger.error({ subscription: s.name, err: error }, "could not claim deliveries");
          return 0;
        }),
      ),
    );
    return counts.reduce((a, b) => a + b, 0);
  }

  /**
   * What dispatch may claim for this worker as it writes deliveries: served subscriptions
   * that are unordered (ordered ones need the per-key check of a normal claim) and have no
   * cross-worker `concurrency` limit, up to the free capacity here.
   */
  dispatchClaimRequest(): DispatchClaimRequest | undefined {
    if (this.stopping) return undefined;
    const subs = this.served().filter((s) => !s.ordered && s.config.concurrency === undefined);
    const free = subs.map((s) => this.heldLimit(s) - (this.inFlight.get(s.name) ?? 0));
    const limit = Math.min(...free);
    if (subs.length === 0 || limit <= 0) return undefined;
    const now = Date.now();
    const settle = this.settleWithinMs > 0
      ? subs.filter((s) => this.transports.get(s.kind)?.settlesInRound && (this.slowUntil.get(s.name) ?? 0) <= now).map((s) => s.name)
      : [];
    return { worker: this.options.workerId, subscriptions: subs.map((s) => s.name), limit, leaseMs: this.leaseMs, settle };
  }

  /**
   * Deliveries this worker may hold for a subscription: `maxHeldPerSubscription`, or enough
   * to keep every transport slot busy with full batches (a webhook with batch_size 100 needs
   * 100 events per request in flight), at most 20,000.
   */
  private heldLimit(sub: Subscription): number {
    const batch = this.transports.get(sub.kind)?.batchSize(sub) ?? 1;
    return Math.max(this.maxInFlight, Math.min(20_000, batch * this.concurrency));
  }

  /**
   * Starts deliveries that dispatch wrote already claimed for this worker. For those it wrote
   * as delivered (`settle`), in a transaction still open until `committed`, waits up to
   * `settleWithinMs` and resolves to the ids to put back to delivering (see
   * {@link RoundSettlement}); otherwise resolves to none at once.
   */
  async startClaimed(rows: DispatchedClaim[], committed: Promise<void>): Promise<string[]> {
    const settlement = new RoundSettlement();
    const held: string[] = [];
    let settling = false;
    const bySubscription = new Map<string, DispatchedClaim[]>();
    for (const row of rows) {
      const list = bySubscription.get(row.subscription);
      if (list) list.push(row);
      else bySubscription.set(row.subscription, [row]);
    }
    for (const [name, claimed] of bySubscription) {
      const sub = this.subscriptions.get(name);
      const transport = sub && this.transports.get(sub.kind);
      this.inFlight.set(name, (this.inFlight.get(name) ?? 0) + claimed.length);
      if (!sub || !transport) {
        // Unknown here: renamed or deleted after the round's claim was asked for. Handed back
        // as due at once, once the round commits (settled rows are put back to delivering
        // first), for whoever serves the subscription now. Left held, their leases would be
        // extended for as long as this worker holds anything else.
        held.push(...claimed.filter((r) => r.settle).map((r) => r.id));
        const back = claimed.map((r): RecordedOutcome => ({
          subscription: name, id: r.id, outcome: "retry", error: UNKNOWN_SUBSCRIPTION_ERROR, status: null, retryAfterMs: 0,
        }));
        this.outcomes.push(back, committed);
        continue;
      }
      const attempt = (r: DispatchedClaim): DeliveryAttempt => ({ deliveryId: r.id, attempt: 1, body: r.payload, eventId: r.eventId });
      const settled = claimed.filter((r) => r.settle);
      // Written in the same round: their rows exist for the pool only after its commit.
      if (settled.length < claimed.length) this.startAttempts(sub, transport, claimed.filter((r) => !r.settle).map(attempt), { committed });
      if (settled.length > 0) {
        settling = true;
        settlement.add(name, settled.map((r) => r.id));
        this.startAttempts(sub, transport, settled.map(attempt), { settlement, committed });
      }
    }
    if (!settling) return held;
    const { held: unsettled, slow } = await settlement.close(this.settleWithinMs);
    for (const name of slow) {
      this.slowUntil.set(name, Date.now() + SLOW_SETTLE_PAUSE_MS);
      this.options.logger.info({ subscription: name, settleWithinMs: this.settleWithinMs }, "handler outlasted settleWithinMs: for the next 10 s its deliveries are written as delivering, and recorded when it returns");
    }
    return [...held, ...unsettled];
  }

  private startAttempts(sub: Subscription, transport: Transport, attempts: DeliveryAttempt[], round: Omit<QueuedBatch, "attempts"> = {}): void {
    const size = Math.max(1, transport.batchSize(sub));
    const queue = this.queued.get(sub.name) ?? [];
    this.queued.set(sub.name, queue);
    for (let i = 0; i < attempts.length; i += size) queue.push({ attempts: attempts.slice(i, i + size), ...round });
    this.startQueued(sub, transport);
  }

  /** Starts queued batches while the subscription has free slots. */
  private startQueued(sub: Subscription, transport: Transport): void {
    const queue = this.queued.get(sub.name);
    const limit = Math.min(Number(sub.config.concurrency ?? this.concurrency), this.concurrency);
    while (queue?.length && !this.stopping && (this.running.get(sub.name) ?? 0) < limit) {
      this.running.set(sub.name, (this.running.get(sub.name) ?? 0) + 1);
      const batch = queue.shift()!;
      void this.run(sub, transport, batch).finally(() => {
        this.running.set(sub.name, (this.running.get(sub.name) ?? 0) - 1);
        this.startQueued(sub, transport);
      });
    }
  }

  private async pump(name: string): Promise<number> {
    if (this.stopping) return 0;
    if (this.pumping.has(name)) {
      this.repump.add(name);
      return 0;
    }
    this.pumping.add(name);
    let claimed = 0;
    try {
      for (;;) {
        this.repump.delete(name);
        const sub = this.subscriptions.get(name);
        const transport = sub && this.transports.get(sub.kind);
        if (!sub || !sub.active || !transport?.serves(sub) || this.stopping) break;
        const limit = Math.min(Number(sub.config.concurrency ?? Infinity), this.heldLimit(sub));
        const capacity = limit - (this.inFlight.get(name) ?? 0);
        if (capacity <= 0) {
          this.claimFor.add(name); // what is due waits for capacity, not for a wake-up
          break;
        }
        const want = Math.min(capacity, this.claimBatch);
        const rows = await settleWithin(deliveryClaimDue(this.options.sql, this.options.workerId, name, want, this.leaseMs), ANSWER_WITHIN_MS);
        claimed += rows.length;
        if (rows.length > 0) {
          // Found work: claim again next round, since more may be coming (a worker that
          // dispatch does not hand deliveries to finds them this way while it is busy). A
          // claim that finds nothing ends it; then wake-ups and polls ask again.
          this.claimFor.add(name);
          this.inFlight.set(name, (this.inFlight.get(name) ?? 0) + rows.length);
          this.startAttempts(
            sub,
            transport,
            rows.map((r) => ({ deliveryId: r.id, attempt: r.attempts, body: r.payload, eventId: r.eventId })),
          );
        }
        if (rows.length < want && !this.repump.has(name)) break;
      }
    } finally {
      this.pumping.delete(name);
    }
    return claimed;
  }

  private async run(sub: Subscription, transport: Transport, { attempts, settlement, committed }: QueuedBatch): Promise<void> {
    let outcomes: DeliveryOutcome[];
    try {
      outcomes = await transport.deliver(sub, attempts);
    } catch (error) {
      outcomes = attempts.map(() => ({ outcome: "retry", error: errorText(error) }));
    }
    const results: RecordedOutcome[] = [];
    attempts.forEach((attempt, i) => {
      const o = outcomes[i] ?? { outcome: "retry" as const, error: "transport returned no outcome" };
      if (settlement?.finished(attempt.deliveryId, o.outcome === "delivered")) {
        this.inFlight.set(sub.name, (this.inFlight.get(sub.name) ?? 0) - 1);
        return;
      }
      results.push({
        subscription: sub.name,
        id: attempt.deliveryId,
        outcome: o.outcome,
        error: o.outcome === "delivered" ? null : o.error,
        status: o.status ?? null,
        retryAfterMs: o.outcome === "delivered" ? null : (o.retryAfterMs ?? null),
      });
      if (o.outcome !== "delivered") {
        this.claimFor.add(sub.name);
        this.options.logger.debug({ subscription: sub.name, deliveryId: attempt.deliveryId, outcome: o.outcome, error: o.error }, "attempt failed");
        if (o.deactivate) void this.deactivate(sub, o.deactivate);
      }
    });
    // Still held until the outcome is recorded (flush): claiming more before that would let
    // unrecorded outcomes pile up without bound when recording is the slower side.
    this.outcomes.push(results, committed);
    this.notifyIdle();
  }

  private async deactivate(sub: Subscription, reason: string): Promise<void> {
    this.options.logger.warn({ subscription: sub.name, reason }, "deactivating subscription");
    sub.active = false;
    await subscriptionDeactivate(this.options.sql, sub.name, reason).catch((error) =>
      this.options.logger.error({ subscription: sub.name, err: error }, "could not deactivate subscription"),
    );
  }

  private notifyIdle(): void {
    if (this.inFlightTotal === 0) {
      for (const resolve of this.idleWaiters.splice(0)) resolve();
    }
  }

  /** Marks the pool closed: outcomes that arrive later are not retried forever. */
  close(): void {
    this.closed = true;
    this.outcomes.close();
    clearInterval(this.leaseTimer);
  }

  /** Stops claiming; waits up to `timeoutMs` for in-flight deliveries and records their outcomes. */
  async drain(timeoutMs: number): Promise<boolean> {
    this.stopping = true;
    // Claimed but not started: not worth waiting for. The worker hands them back
    // (deliveryReleaseHeld) so that they are due again at once.
    for (const [name, queue] of this.queued) {
      const dropped = queue.reduce((n, batch) => n + batch.attempts.length, 0);
      queue.length = 0;
      this.inFlight.set(name, (this.inFlight.get(name) ?? 0) - dropped);
    }
    if (this.inFlightTotal > 0) {
      await Promise.race([
        new Promise<void>((resolve) => this.idleWaiters.push(resolve)),
        new Promise<void>((resolve) => setTimeout(resolve, timeoutMs).unref()),
      ]);
    }
    await this.outcomes.flush();
    const drained = this.inFlightTotal === 0;
    for (const t of this.transports.values()) await t.close?.();
    return drained;
  }
}
