import assert from "node:assert/strict";
import { test } from "node:test";
import postgres from "postgres";
import { dispatchRoundRun } from "../src/db/dispatchState.js";
import { subscriptionList } from "../src/db/subscriptions.js";
import { Deliverer } from "../src/delivery/deliverer.js";
import { silentLogger } from "../src/logger.js";
import { HandlerTransport, NonRetryableError } from "../src/transports/handler.js";
import type { OutboxEvent } from "../src/transports/transport.js";
import { useTestDatabase, waitFor } from "./harness.js";
import { capturedTable, deliveriesOf, recordOutcomes, startOutbox, testWorkerOptions } from "./deliveryHelpers.js";

const db = useTestDatabase();

test("an insert reaches a registered handler with the envelope; its delivery ends delivered after one attempt", async () => {
  await capturedTable(db.sql, "h1");
  const received: Array<{ event: OutboxEvent; attempt: number; deliveryId: string; raw: string }> = [];
  const w = await startOutbox(db, (o) =>
    o.handle("h1_handler", "public.h1.*", (event, context) => {
      received.push({ event, ...context });
    }),
  );
  try {
    await db.sql`insert into h1 (id, status, email) values (42, 'new', 'a@x')`;
    await waitFor(async () => received.length > 0, "the handler to be called");
    const [{ event, attempt, deliveryId, raw }] = received as [(typeof received)[0]];
    const [stored] = await db.sql<{ id: string; payload: Record<string, unknown> }[]>`
      select id, payload from outbox.events where table_name = 'h1'`;
    assert.equal(event.id, stored!.id, "the envelope's id is the event's id");
    assert.equal(event.type, "public.h1.insert");
    assert.equal(event.op, "insert");
    assert.deepEqual(event.table, { schema: "public", name: "h1" });
    assert.deepEqual(event.key, { id: 42 });
    assert.deepEqual(event.new, { id: 42, status: "new", email: "a@x", org: null, body: null, version: 1 });
    assert.equal(event.old, null);
    assert.match(event.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);
    assert.ok(!("data" in event), "a capture event carries no data");
    assert.deepEqual(event, stored!.payload, "the handler gets exactly the stored envelope");
    assert.deepEqual(JSON.parse(raw), event, "context.raw is the envelope as JSON text");
    assert.equal(attempt, 1);

    const [delivery] = await waitFor(async () => {
      const rows = await deliveriesOf(db.sql, "h1_handler");
      return rows[0]?.status === "delivered" ? rows : undefined;
    }, "the delivery to be recorded as delivered");
    assert.equal(delivery!.id, deliveryId, "context.deliveryId is the delivery row");
    assert.equal(delivery!.event_id, stored!.id);
    assert.equal(delivery!.attempts, 1);
    assert.ok(delivery!.delivered_at instanceof Date, "delivered_at is set");
    assert.ok(Math.abs(delivery!.delivered_at.getTime() - Date.now()) < 60_000);
    assert.equal(delivery!.last_error, null);
    assert.equal(received.length, 1, "delivered once");
  } finally {
    await w.stop();
  }
});

test("a handler that throws is retried with full-jitter backoff: retrying, last_error, next_attempt_at within [now, now + 2^n s]", async () => {
  await capturedTable(db.sql, "h2");
  const calls: number[] = [];
  const w = await startOutbox(db, (o) =>
    o.handle("h2_handler", "public.h2.*", () => {
      calls.push(Date.now());
      throw new Error(`boom ${calls.length}`);
    }),
  );
  // The state each attempt left, even when the next attempt comes within milliseconds.
  const outcomes = await recordOutcomes(db.sql, "h2_handler");
  try {
    await db.sql`insert into h2 (id) values (1)`;
    for (const n of [1, 2]) {
      const row = await waitFor(
        async () => (await outcomes()).find((o) => o.attempts === n),
        `the outcome of attempt ${n} to be recorded`,
      );
      const readAt = Date.now();
      const failedAt = calls[n - 1]!;
      assert.equal(row.status, "retrying");
      assert.equal(row.last_error, `boom ${n}`, "last_error is the handler's error message");
      assert.equal(row.delivered_at, null);
      const next = row.next_attempt_at.getTime();
      const bound = Math.min(3600, 2 ** n) * 1000;
      // Recorded after the handler threw (clock tolerance of 50 ms for timestamp rounding).
      assert.ok(next >= failedAt - 50, `attempt ${n}: next_attempt_at ${next - failedAt} ms after the failure is not before it`);
      assert.ok(next <= readAt + bound + 50, `attempt ${n}: next_attempt_at is at most ${bound} ms after the failure (got ${next - failedAt} ms)`);
      // The same bound measured in the database, against the time the outcome was recorded.
      const waitMs = row.next_attempt_at.getTime() - row.updated_at.getTime();
      assert.ok(waitMs >= 0 && waitMs <= bound, `attempt ${n}: next_attempt_at within [updated_at, updated_at + ${bound / 1000} s] (${waitMs} ms)`);
    }
    assert.ok(calls[1]! - calls[0]! <= 2000 + 1500, "the second attempt came within the first backoff bound (plus poll and scheduling slack)");
  } finally {
    await w.stop();
  }
});

test("with max_attempts 2 a failing delivery ends dead after 2 attempts", async () => {
  await capturedTable(db.sql, "h3");
  let calls = 0;
  const w = await startOutbox(db, (o) =>
    o.handle(
      "h3_handler",
      "public.h3.*",
      () => {
        calls++;
        throw new Error("always fails");
      },
      { maxAttempts: 2 },
    ),
  );
  try {
    const [{ max_attempts }] = await db.sql<{ max_attempts: number }[]>`
      select max_attempts from outbox.subscriptions where name = 'h3_handler'`;
    assert.equal(max_attempts, 2);
    await db.sql`insert into h3 (id) values (1)`;
    const [row] = await waitFor(async () => {
      const rows = await deliveriesOf(db.sql, "h3_handler");
      return rows[0]?.status === "dead" ? rows : undefined;
    }, "the delivery to go dead", 15_000);
    assert.equal(row!.attempts, 2);
    assert.equal(row!.last_error, "always fails");
    assert.equal(row!.delivered_at, null);
    assert.equal(calls, 2, "no attempt after the last one");
  } finally {
    await w.stop();
  }
});

test("a NonRetryableError makes the delivery dead at once", async () => {
  await capturedTable(db.sql, "h4");
  let calls = 0;
  const w = await startOutbox(db, (o) =>
    o.handle("h4_handler", "public.h4.*", () => {
      calls++;
      throw new NonRetryableError("malformed order");
    }),
  );
  try {
    await db.sql`insert into h4 (id) values (1)`;
    const [row] = await waitFor(async () => {
      const rows = await deliveriesOf(db.sql, "h4_handler");
      return rows[0] && rows[0].status !== "pending" && rows[0].status !== "delivering" ? rows : undefined;
    }, "the first attempt's outcome");
    assert.equal(row!.status, "dead");
    assert.equal(row!.attempts, 1);
    assert.match(row!.last_error ?? "", /malformed order/);
    assert.equal(calls, 1);
  } finally {
    await w.stop();
  }
});

test("rolled-back writes are never delivered", async () => {
  await capturedTable(db.sql, "h5");
  const seen: number[] = [];
  const w = await startOutbox(db, (o) =>
    o.handle("h5_handler", "public.h5.*", (event) => {
      seen.push(Number((event.key as { id: number }).id));
    }),
  );
  try {
    await assert.rejects(
      db.sql.begin(async (tx) => {
        await tx`insert into h5 (id) values (1), (2)`;
        throw new Error("rollback");
      }),
      /rollback/,
    );
    await db.sql.begin(async (tx) => {
      await tx`insert into h5 (id) values (3)`;
      await assert.rejects(
        tx.savepoint(async (sp) => {
          await sp`insert into h5 (id) values (4)`;
          throw new Error("undo savepoint");
        }),
      );
    });
    await db.sql`insert into h5 (id) values (5)`;
    // The handler may run before its dispatch round commits (settleWithinMs): wait for the row too.
    const rows = await waitFor(async () => {
      const list = await deliveriesOf(db.sql, "h5_handler");
      return seen.includes(5) && list.some((r) => r.row_id === 5) ? list : undefined;
    }, "the last committed insert to be delivered and recorded");
    assert.deepEqual(rows.map((r) => r.row_id), [3, 5], "deliveries exist only for committed rows");
    assert.deepEqual([...seen].sort((a, b) => a - b), [3, 5]);
  } finally {
    await w.stop();
  }
});

test("a handler subscription is served only by workers that registered it", async () => {
  await capturedTable(db.sql, "h6");
  const ownerSeen: number[] = [];
  // The owner registers the handler (creating the subscription), then stops.
  const owner = await startOutbox(db, (o) => o.handle("h6_owned", "public.h6.*", (e) => void ownerSeen.push(Number((e.key as { id: number }).id))));
  await owner.stop();

  // Another worker runs without that handler; its own handler on the same table shows it is working.
  const otherSeen: number[] = [];
  const other = await startOutbox(db, (o) =>
    o.handle("h6_other", "public.h6.*", (e) => void otherSeen.push(Number((e.key as { id: number }).id))),
  );
  try {
    await db.sql`insert into h6 (id) values (1)`;
    await waitFor(async () => otherSeen.includes(1), "the other worker's own handler to get event 1");
    await db.sql`insert into h6 (id) values (2)`;
    await waitFor(async () => otherSeen.includes(2), "the other worker's own handler to get event 2");
    // Several dispatch and claim rounds later, the owned subscription's deliveries are untouched.
    await waitFor(async () => (await deliveriesOf(db.sql, "h6_other")).every((r) => r.status === "delivered"), "h6_other delivered");
    const owned = await deliveriesOf(db.sql, "h6_owned");
    assert.deepEqual(owned.map((r) => [r.row_id, r.status, r.attempts]), [[1, "pending", 0], [2, "pending", 0]]);
    assert.equal(ownerSeen.length, 0, "the owner's handler never ran");
  } finally {
    await other.stop();
  }

  // When a worker that registered it runs again, it delivers them.
  const owner2 = await startOutbox(db, (o) => o.handle("h6_owned", "public.h6.*", (e) => void ownerSeen.push(Number((e.key as { id: number }).id))));
  try {
    await waitFor(async () => (await deliveriesOf(db.sql, "h6_owned")).every((r) => r.status === "delivered"), "h6_owned delivered");
    assert.deepEqual([...ownerSeen].sort((a, b) => a - b), [1, 2]);
  } finally {
    await owner2.stop();
  }
});

/** Whether a delivery row was last written by the dispatch round that last moved the cursor. */
async function writtenByLastRound(deliveryId: string): Promise<boolean> {
  const [row] = await db.sql<{ same: boolean }[]>`
    select d.xmin::text = s.xmin::text as same
    from outbox.deliveries d, outbox._dispatch_state s where d.id = ${deliveryId}`;
  return row!.same;
}

test("a handler that returns within settleWithinMs has its delivery written once, as delivered, by the dispatch round that read its event", async () => {
  await capturedTable(db.sql, "h8");
  const seen: string[] = [];
  const w = await startOutbox(db, (o) => o.handle("h8_handler", "public.h8.*", (_event, context) => void seen.push(context.deliveryId)), {
    ...testWorkerOptions,
    settleWithinMs: 1000,
  });
  try {
    await db.sql`insert into h8 (id, status) values (1, 'new')`;
    const [delivery] = await waitFor(async () => {
      const rows = await deliveriesOf(db.sql, "h8_handler");
      return rows[0]?.status === "delivered" ? rows : undefined;
    }, "the delivery to be delivered");
    assert.deepEqual(seen, [delivery!.id], "the handler was called once, with the delivery's id");
    assert.equal(delivery!.attempts, 1);
    assert.ok(delivery!.delivered_at instanceof Date, "delivered_at is set");
    assert.ok(await writtenByLastRound(delivery!.id), "the row was never updated after the round that inserted it");
  } finally {
    await w.stop();
  }
});

test("a handler that outlasts settleWithinMs: its delivery is delivering (leased to the worker) until it returns, then delivered; the subscription is not waited for next time", async () => {
  await capturedTable(db.sql, "h9");
  let release!: () => void;
  const gate = new Promise<void>((resolve) => (release = resolve));
  const seen: string[] = [];
  const w = await startOutbox(
    db,
    (o) =>
      o.handle("h9_handler", "public.h9.*", async (_event, context) => {
        seen.push(context.deliveryId);
        if (seen.length === 1) await gate;
      }),
    { ...testWorkerOptions, leaseMs: 30_000, settleWithinMs: 20 },
  );
  try {
    await db.sql`insert into h9 (id, status) values (1, 'new')`;
    const [held] = await waitFor(async () => {
      const rows = await db.sql<{ id: string; status: string; locked_by: string | null; attempts: number }[]>`
        select id::text, status, locked_by, attempts from outbox.deliveries where subscription = 'h9_handler'`;
      return rows.length > 0 ? rows : undefined;
    }, "the round to commit the delivery");
    assert.deepEqual(held, { id: seen[0], status: "delivering", locked_by: w.worker.id, attempts: 1 }, "put back to delivering, leased to the worker");
    release();
    const [first] = await waitFor(async () => {
      const rows = await deliveriesOf(db.sql, "h9_handler");
      return rows[0]?.status === "delivered" ? rows : undefined;
    }, "the slow delivery to be recorded as delivered");
    assert.equal(first!.attempts, 1);

    await db.sql`insert into h9 (id, status) values (2, 'new')`;
    const rows = await waitFor(async () => {
      const list = await deliveriesOf(db.sql, "h9_handler");
      return list.length === 2 && list[1]!.status === "delivered" ? list : undefined;
    }, "the second delivery to be delivered");
    assert.equal(seen.length, 2, "each handler call happened once");
    assert.equal(await writtenByLastRound(rows[1]!.id), false, "written as delivering and recorded afterwards, not settled in the round");
  } finally {
    await w.stop();
  }
});

test("in a round that waits for a handler, another subscription's delivery of the same event is recorded after the round commits: one attempt, delivered", async () => {
  await capturedTable(db.sql, "h10");
  await db.sql`insert into outbox.subscriptions (name, pattern, kind, config) values ('h10_notify', 'public.h10.*', 'notify', '{"channel": "h10_channel"}')`;
  const listener = postgres(db.url, { max: 1, onnotice: () => undefined });
  const heard: string[] = [];
  await listener.listen("h10_channel", (payload) => void heard.push(payload));
  // The handler keeps the round open for 200 ms; the notification goes out within it, and
  // its outcome, recorded before the commit, would find no row.
  const w = await startOutbox(db, (o) => o.handle("h10_handler", "public.h10.*", () => new Promise((resolve) => setTimeout(resolve, 200))), {
    ...testWorkerOptions,
    settleWithinMs: 1000,
  });
  try {
    await db.sql`insert into h10 (id, status) values (1, 'new')`;
    const rows = await waitFor(async () => {
      const list = await db.sql<{ subscription: string; status: string; attempts: number }[]>`
        select subscription, status, attempts from outbox.deliveries where subscription like 'h10%' order by subscription`;
      return list.length === 2 && list.every((r) => r.status === "delivered") ? list : undefined;
    }, "both deliveries delivered");
    assert.deepEqual(rows.map((r) => [r.subscription, r.attempts]), [["h10_handler", 1], ["h10_notify", 1]], "each delivered on its first attempt");
    assert.equal(heard.length, 1, "the notification was sent once");
  } finally {
    await listener.end({ timeout: 5 });
    await w.stop();
  }
});

test("deliveries a round claimed for a subscription missing from the worker's cache by the hand-off are handed back, due at once, instead of staying held", async () => {
  await capturedTable(db.sql, "h11");
  await db.sql`insert into outbox.subscriptions (name, pattern, kind) values ('h11_old', 'public.h11.*', 'handler')`;
  await db.sql`insert into h11 (id) values (1), (2)`;
  const handlers = new HandlerTransport();
  handlers.register("h11_old", () => undefined);
  const deliverer = new Deliverer({ sql: db.sql, workerId: "h11-worker", transports: [handlers], logger: silentLogger() });
  deliverer.setSubscriptions(await subscriptionList(db.sql));
  const claim = deliverer.dispatchClaimRequest();
  assert.deepEqual(claim?.settle, ["h11_old"], "claimed and settled in the round");
  // The cache is reloaded between the claim request and the hand-off, without the subscription
  // (as after a rename or delete that the round's own snapshot did not see yet).
  deliverer.setSubscriptions([]);
  const conn = postgres(db.url, { max: 1, onnotice: () => undefined });
  try {
    let committed!: () => void;
    const commitAnswered = new Promise<void>((resolve) => (committed = resolve));
    const round = await dispatchRoundRun(conn, 100, claim, (r) => deliverer.startClaimed(r.claimed, commitAnswered)).finally(committed);
    assert.equal(round.claimed.length, 2);
    const rows = await waitFor(async () => {
      const list = await deliveriesOf(db.sql, "h11_old");
      return list.every((d) => d.status === "retrying") ? list : undefined;
    }, "the deliveries to be handed back");
    assert.equal(rows.length, 2);
    assert.ok(rows.every((d) => /renamed or deleted/.test(d.last_error ?? "")), "last_error says why");
    const [due] = await db.sql<{ n: number }[]>`
      select count(*)::int as n from outbox.deliveries where subscription = 'h11_old' and next_attempt_at <= now() and locked_by is null`;
    assert.equal(due!.n, 2, "due at once, for whoever serves the subscription now");
    assert.equal(deliverer.inFlightTotal, 0, "not counted as held by this worker");
  } finally {
    deliverer.close();
    await conn.end();
  }
});
