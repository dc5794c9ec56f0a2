/**
 * Dispatch and claims keep one generic plan per statement for their session (sql/110 and
 * sql/120), made from the table sizes of their first rounds, often an empty or nearly empty
 * outbox. These tests make the plans at that moment and check that later rounds still read
 * only the rows they need: a round's cost must not grow with the events and deliveries
 * retained (DESIGN.md guarantee 6).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import type { ReservedSql } from "postgres";
import { capturedTable, dispatchOnce, dispatchRoundStats, xactTableWork } from "./deliveryHelpers.js";
import { createTestDatabase, dropTestDatabase, type TestDatabase, useTestDatabase } from "./harness.js";

const db = useTestDatabase();

/**
 * Runs `body` on a database of its own (its statistics must be what the test makes them) with
 * a captured table `events` and a notify subscription `sub` on it, and one reserved session
 * for the rounds whose plans the test examines.
 */
async function withOwnOutbox(body: (own: TestDatabase, conn: ReservedSql) => Promise<void>): Promise<void> {
  const own = await createTestDatabase();
  const conn = await own.sql.reserve();
  try {
    await capturedTable(own.sql, "events");
    await own.sql`insert into outbox.subscriptions (name, pattern, kind, config) values ('sub', 'public.events.*', 'notify', '{"channel": "sub"}')`;
    await body(own, conn);
  } finally {
    conn.release();
    await dropTestDatabase(own);
  }
}

test("a dispatch round reads the new events, the late ones and the claimed ones' envelopes, not every event before them, also when the session's plans were made while outbox._events held one event", async () => {
  await withOwnOutbox(async (own, conn) => {
    // Statistics that say what (auto)analyze says of a new outbox: one event on one page.
    await own.sql`insert into events (id) values (1)`;
    await own.sql`vacuum analyze outbox._events`;
    assert.equal((await dispatchRoundStats(conn, "sub")).events, 1, "a first round claiming one event makes the session's plans");
    for (let i = 2; i <= 501; i++) await own.sql`insert into events (id) values (${i})`;
    assert.equal((await dispatchRoundStats(conn, "sub")).events, 500);
    await own.sql`insert into events (id) values (502)`;
    const next = await dispatchRoundStats(conn, "sub");
    assert.equal(next.events, 1, "the round read and claimed the one event written since");
    assert.ok(next.fetched <= 10, `it fetched ${next.fetched} rows of outbox._events (the 501 before it are not read again)`);
  });
});

/** One claim of up to `limit` deliveries on `conn`, with the rows of outbox.deliveries its index scans fetched. */
async function claimStats(conn: ReservedSql, subscription: string, limit: number): Promise<{ claimed: number; fetched: number }> {
  const { result, fetched } = await xactTableWork(conn, "outbox.deliveries", () =>
    conn`select id from outbox._delivery_claim('w', ${subscription}, ${limit}, 30000)`);
  return { claimed: result.length, fetched };
}

test("a claim reads the deliveries it takes, also when the session's plans were made while outbox.deliveries held one row", async () => {
  await withOwnOutbox(async (own, conn) => {
    await own.sql`insert into events (id) values (1)`;
    await dispatchOnce(own.sql);
    await own.sql`vacuum analyze outbox.deliveries`;
    assert.equal((await claimStats(conn, "sub", 100)).claimed, 1, "a first claim of one delivery makes the session's plans");
    await own.sql`insert into events (id) select g from generate_series(2, 501) g`;
    await dispatchOnce(own.sql);
    const next = await claimStats(conn, "sub", 5);
    assert.equal(next.claimed, 5);
    assert.ok(next.fetched <= 20, `it fetched ${next.fetched} rows of outbox.deliveries to claim 5 of 500`);
  });
});

test("a dispatch session whose plans were made on an empty events table still reads events by index, not by scanning the table", async () => {
  await capturedTable(db.sql, "plan_events");
  await db.sql`insert into outbox.subscriptions (name, pattern, kind, config) values ('plan_sub', 'public.plan_events.*', 'notify', '{"channel": "plan_sub"}')`;
  const conn = await db.sql.reserve();
  try {
    // The session's generic plans are made by its first round, with no event yet.
    assert.equal((await dispatchRoundStats(conn, "plan_sub")).events, 0);
    for (let i = 1; i <= 300; i++) await db.sql`insert into plan_events (id) values (${i})`;
    const later = await dispatchRoundStats(conn, "plan_sub");
    assert.equal(later.events, 300, "the round read the 300 events written since");
    assert.equal(later.seqScans, 0, "without scanning outbox._events");
  } finally {
    conn.release();
  }
});
