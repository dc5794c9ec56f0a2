/**
 * Testing support for apps (the Laravel `Event::fake` idea, on real PostgreSQL): record the
 * events a block of code committed, then assert on them.
 */
import { AssertionError } from "node:assert";
import { eventListCommittedSince, snapshotCurrent, type Queryable } from "./db/events.js";
import { wrapDatabaseError } from "./errors.js";
import { topicMatches } from "./topicMatches.js";
import type { OutboxEvent } from "./transports/transport.js";

/** A test on one event for the assertions of {@link CapturedEvents}. */
export type EventPredicate = (event: OutboxEvent) => boolean;

/**
 * The events a block committed, as envelopes in position order, with assertions that throw
 * node's `AssertionError` (so every test runner reports them as failed assertions).
 * `type` arguments are patterns: an exact type (`public.users.insert`) or a glob
 * (`public.users.*`, `order.**`), the same rule as subscriptions.
 */
export class CapturedEvents implements Iterable<OutboxEvent> {
  /** Every captured event. */
  readonly all: readonly OutboxEvent[];

  constructor(events: OutboxEvent[]) {
    this.all = events;
  }

  /** How many events were captured. */
  get length(): number {
    return this.all.length;
  }

  [Symbol.iterator](): Iterator<OutboxEvent> {
    return this.all[Symbol.iterator]();
  }

  /** The captured types, in order (handy in assertion messages and `deepEqual`). */
  types(): string[] {
    return this.all.map((e) => e.type);
  }

  /** The events whose type matches `type` (an exact type or a pattern). */
  ofType(type: string): OutboxEvent[] {
    return this.all.filter((e) => topicMatches(e.type, type));
  }

  /** Asserts that at least one event of `type` (satisfying `predicate`, if given) was captured; returns those. */
  assertEmitted(type: string, predicate?: EventPredicate): OutboxEvent[] {
    const matching = this.matching(type, predicate);
    if (matching.length === 0) {
      this.fail(`expected an event ${type}${predicate ? " satisfying the predicate" : ""}, but none was captured`, "assertEmitted");
    }
    return matching;
  }

  /** Asserts that no event of `type` (satisfying `predicate`, if given) was captured. */
  assertNotEmitted(type: string, predicate?: EventPredicate): void {
    const matching = this.matching(type, predicate);
    if (matching.length > 0) {
      this.fail(`expected no event ${type}${predicate ? " satisfying the predicate" : ""}, but ${matching.length} were captured`, "assertNotEmitted");
    }
  }

  /** Asserts that exactly `count` events of `type` (satisfying `predicate`, if given) were captured; returns them. */
  assertCount(type: string, count: number, predicate?: EventPredicate): OutboxEvent[] {
    const matching = this.matching(type, predicate);
    if (matching.length !== count) {
      this.fail(`expected ${count} events ${type}${predicate ? " satisfying the predicate" : ""}, but ${matching.length} were captured`, "assertCount");
    }
    return matching;
  }

  /** Asserts that nothing was captured. */
  assertNothingEmitted(): void {
    if (this.all.length > 0) this.fail(`expected no events, but ${this.all.length} were captured`, "assertNothingEmitted");
  }

  private matching(type: string, predicate?: EventPredicate): OutboxEvent[] {
    const ofType = this.ofType(type);
    return predicate ? ofType.filter(predicate) : ofType;
  }

  private fail(message: string, operator: string): never {
    throw new AssertionError({ message: `${message}; captured: ${this.summary()}`, operator });
  }

  /** `public.users.insert ×2, order.paid ×1`, in order of first appearance. */
  private summary(): string {
    if (this.all.length === 0) return "nothing";
    const counts = new Map<string, number>();
    for (const e of this.all) counts.set(e.type, (counts.get(e.type) ?? 0) + 1);
    return [...counts].map(([type, n]) => `${type} ×${n}`).join(", ");
  }
}

/**
 * Runs `block` and returns the events of every transaction that committed while it ran.
 *
 * Which events: those of transactions not yet committed when the block started (by a
 * snapshot taken then) and committed when it ended, compared by transaction id, not by
 * position, so a transaction that took its position early and committed late is still
 * caught. Events written in a transaction that is still open when `block` returns, or by
 * work the block started without awaiting, are not included.
 *
 * Whose events: every connection's. PostgreSQL cannot tell which client did what, so writes
 * of other processes that commit meanwhile (a parallel test on the same database, a worker's
 * handler that emits) are included too. Give concurrent tests databases of their own, or
 * narrow with `ofType` and predicates.
 */
export async function captureEvents(client: Queryable, block: () => Promise<unknown>): Promise<CapturedEvents> {
  let before: string;
  try {
    before = await snapshotCurrent(client);
  } catch (error) {
    throw wrapDatabaseError(error, "captureEvents");
  }
  await block();
  const rows = await eventListCommittedSince(client, before);
  return new CapturedEvents(rows.map((r) => JSON.parse(r.payload) as OutboxEvent));
}
