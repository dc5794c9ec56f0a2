import assert from "node:assert/strict";
import { test } from "node:test";
import postgres from "postgres";
import { deliveryCompleteBatch } from "../src/db/deliveries.js";
import { NonRetryableError } from "../src/transports/handler.js";
import type { OutboxEvent } from "../src/transports/transport.js";
import { useTestDatabase, waitFor } from "./harness.js";
import { capturedTable, deliveriesOf, dispatchOnce, startOutbox, statusCounts, xactTableWork } from "./deliveryHelpers.js";

const db = useTestDatabase();

const idOf = (event: OutboxEvent) => Number((event.key as { id: number }).id);

test("redeliver: a dead delivery returns to pending with attempts 0 and is delivered again; one still in line is refused", async () => {
  await capturedTable(db.sql, "l1");
  await db.sql`insert into outbox.subscriptions (name, pattern, kind) values ('l1_unserved', 'public.l1.*', 'handler')`;
  const calls: string[] = [];
  const w = await startOutbox(db, (o) =>
    o.handle("l1_handler", "public.l1.*", () => {
      calls.push(calls.length === 0 ? "dead" : "ok");
      if (calls.length === 1) throw new NonRetryableError("bad payload");
    }),
  );
  try {
    await db.sql`insert into l1 (id) values (1)`;
    const [dead] = await waitFor(async () => {
      const rows = await deliveriesOf(db.sql, "l1_handler");
      return rows[0]?.status === "dead" ? rows : undefined;
    }, "the delivery to go dead");
    assert.equal(dead!.attempts, 1);

    const after = await db.sql.begin(async (tx) => {
      await tx`select outbox.redeliver(${dead!.id}::bigint)`;
      return tx<{ status: string; attempts: number; last_error: string | null; delivered_at: Date | null; id: string }[]>`
        select id::text, status, attempts, last_error, delivered_at from outbox.deliveries where id = ${dead!.id}`;
    });
    assert.deepEqual(after[0], { id: dead!.id, status: "pending", attempts: 0, last_error: null, delivered_at: null }, "the same row, back in line");

    const [again] = await waitFor(async () => {
      const rows = await deliveriesOf(db.sql, "l1_handler");
      return rows[0]?.status === "delivered" ? rows : undefined;
    }, "the redelivered delivery to be delivered");
    assert.equal(again!.id, dead!.id);
    assert.equal(again!.attempts, 1);
    assert.ok(again!.delivered_at instanceof Date);
    assert.deepEqual(calls, ["dead", "ok"]);

    const [pending] = await deliveriesOf(db.sql, "l1_unserved");
    assert.equal(pending!.status, "pending");
    await assert.rejects(db.sql`select outbox.redeliver(${pending!.id}::bigint)`, (error: Error & { code?: string }) => {
      assert.match(error.message, new RegExp(`delivery ${pending!.id} is still in line \\(pending, retrying or delivering\\)`));
      assert.equal(error.code, "55000");
      return true;
    });
    await assert.rejects(db.sql`select outbox.redeliver(987654321)`, /no delivery 987654321/);
  } finally {
    await w.stop();
  }
});

test("replay: an inactive subscription gets no deliveries; replay creates the missing ones and puts delivered ones back in line", async () => {
  await capturedTable(db.sql, "l2");
  const replayed: number[] = [];
  const witnessed: number[] = [];
  const w = await startOutbox(db, (o) => {
    o.handle("l2_replay", "public.l2.*", (e) => void replayed.push(idOf(e)));
    o.handle("l2_witness", "public.l2.*", (e) => void witnessed.push(idOf(e)));
  });
  try {
    const [{ since }] = await db.sql<{ since: Date }[]>`select clock_timestamp() as since`;
    await db.sql`insert into l2 (id) values (1)`;
    await waitFor(async () => (await statusCounts(db.sql, "l2_replay")).delivered === 1, "event 1 delivered");

    await db.sql`update outbox.subscriptions set active = false where name = 'l2_replay'`;
    await db.sql`insert into l2 (id) values (2)`;
    await db.sql`insert into l2 (id) values (3)`;
    await waitFor(async () => (await statusCounts(db.sql, "l2_witness")).delivered === 3, "events 2 and 3 dispatched and delivered to the witness");
    assert.deepEqual((await deliveriesOf(db.sql, "l2_replay")).map((r) => r.row_id), [1], "no deliveries while inactive");
    assert.deepEqual(replayed, [1]);

    await db.sql`update outbox.subscriptions set active = true where name = 'l2_replay'`;
    const inLine = await db.sql.begin(async (tx) => {
      const [{ n }] = await tx<{ n: number }[]>`select outbox.replay('l2_replay', ${since}) as n`;
      const rows = await tx<{ status: string; attempts: number; row_id: number }[]>`
        select d.status, d.attempts, (e.key ->> 'id')::int as row_id
        from outbox.deliveries d join outbox.events e on e.id = d.event_id
        where d.subscription = 'l2_replay' order by d.event_position`;
      return { n, rows };
    });
    assert.equal(inLine.n, 3, "one delivered put back in line, two created");
    assert.deepEqual(inLine.rows.map((r) => [r.row_id, r.status, r.attempts]), [
      [1, "pending", 0],
      [2, "pending", 0],
      [3, "pending", 0],
    ]);

    await waitFor(async () => (await statusCounts(db.sql, "l2_replay")).delivered === 3, "the replayed deliveries delivered");
    assert.deepEqual([...replayed].sort((a, b) => a - b), [1, 1, 2, 3]);
    assert.deepEqual([...witnessed].sort((a, b) => a - b), [1, 2, 3], "replay touches only its subscription");
    await assert.rejects(db.sql`select outbox.replay('l2_nope', now())`, /no subscription 'l2_nope'/);
  } finally {
    await w.stop();
  }
});

test("deleting a subscription deletes its deliveries", async () => {
  await capturedTable(db.sql, "l3");
  await db.sql`
    insert into outbox.subscriptions (name, pattern, kind) values ('l3_gone', 'public.l3.*', 'handler'), ('l3_kept', 'public.l3.*', 'handler')`;
  await db.sql`insert into l3 (id) values (1), (2)`;
  await dispatchOnce(db.sql);
  assert.equal((await deliveriesOf(db.sql, "l3_gone")).length, 2);
  await db.sql`delete from outbox.subscriptions where name = 'l3_gone'`;
  assert.equal((await db.sql`select 1 from outbox.deliveries where subscription = 'l3_gone'`).length, 0);
  assert.equal((await deliveriesOf(db.sql, "l3_kept")).length, 2, "other subscriptions keep theirs");
});

test("deleting several subscriptions in one statement deletes all their deliveries; a delete that matches none leaves dispatch alone", async () => {
  await capturedTable(db.sql, "l3m");
  await db.sql`
    insert into outbox.subscriptions (name, pattern, kind) values
      ('l3m_a', 'public.l3m.*', 'handler'), ('l3m_b', 'public.l3m.*', 'handler'), ('l3m_kept', 'public.l3m.*', 'handler')`;
  await db.sql`insert into l3m (id) values (1), (2)`;
  await dispatchOnce(db.sql);
  await db.sql`delete from outbox.subscriptions where name in ('l3m_a', 'l3m_b')`;
  assert.equal((await db.sql`select 1 from outbox.deliveries where subscription in ('l3m_a', 'l3m_b')`).length, 0);
  assert.equal((await deliveriesOf(db.sql, "l3m_kept")).length, 2, "other subscriptions keep theirs");
  // The state row is what makes a racing dispatch round fail or wait: touched only when
  // something was deleted.
  const stateTouched = async () => (await db.sql<{ at: Date }[]>`select updated_at as at from outbox._dispatch_state`)[0]!.at.getTime();
  const before = await stateTouched();
  await db.sql`delete from outbox.subscriptions where name = 'l3m_nope'`;
  assert.equal(await stateTouched(), before);
});

test("renaming a subscription renames its deliveries; truncating subscriptions deletes every delivery", async () => {
  await capturedTable(db.sql, "l3r");
  await db.sql`insert into outbox.subscriptions (name, pattern, kind) values ('l3r_old', 'public.l3r.*', 'handler')`;
  await db.sql`insert into l3r (id) values (1), (2)`;
  await dispatchOnce(db.sql);
  await db.sql`update outbox.subscriptions set name = 'l3r_new' where name = 'l3r_old'`;
  assert.equal((await deliveriesOf(db.sql, "l3r_old")).length, 0);
  assert.equal((await deliveriesOf(db.sql, "l3r_new")).length, 2, "the deliveries follow the new name");
  await db.sql`update outbox.subscriptions set pattern = 'public.l3r.insert' where name = 'l3r_new'`;
  assert.equal((await deliveriesOf(db.sql, "l3r_new")).length, 2, "other changes leave them alone");
  await db.sql`truncate outbox.subscriptions cascade`;
  assert.equal((await db.sql`select 1 from outbox.deliveries`).length, 0);
});

/** Waits until a statement of this database starting with `statementStart` waits on a lock. */
async function lockWaitOf(statementStart: string, what: string): Promise<void> {
  await waitFor(async () => {
    const rows = await db.sql`
      select 1 from pg_stat_activity
      where datname = current_database() and wait_event_type = 'Lock' and starts_with(query, ${statementStart})`;
    return rows.length > 0;
  }, what);
}

/** Deliveries whose subscription does not exist (what a delete or rename must never leave). */
async function orphanDeliveries(): Promise<number> {
  const [{ n }] = await db.sql<{ n: number }[]>`
    select count(*)::int as n from outbox.deliveries d
    where not exists (select from outbox.subscriptions s where s.name = d.subscription)`;
  return n;
}

for (const change of ["delete", "rename"] as const) {
  const statement = (name: string) =>
    change === "delete"
      ? db.sql`delete from outbox.subscriptions where name = ${name}`
      : db.sql`update outbox.subscriptions set name = ${name + "_renamed"} where name = ${name}`;

  test(`a subscription's ${change} committed after a dispatch round took its snapshot makes the round fail and read again, leaving no stray deliveries`, async () => {
    const table = `l3${change[0]}a`;
    await capturedTable(db.sql, table);
    await db.sql`insert into outbox.subscriptions (name, pattern, kind) values
      (${table + "_changed"}, ${`public.${table}.*`}, 'handler'), (${table + "_kept"}, ${`public.${table}.*`}, 'handler')`;
    await db.sql.unsafe(`insert into ${table} (id) values (1), (2)`);
    const round = await db.sql.reserve();
    try {
      await round`begin isolation level repeatable read`;
      await round`select 1`; // the round's snapshot: it still sees the subscription as it was
      await statement(table + "_changed");
      const outcome = await round`select * from outbox._dispatch()`.then(() => "wrote", (error: { code?: string }) => error.code);
      await round`rollback`;
      assert.equal(outcome, "40001", "the round must not write deliveries for a subscription changed since its snapshot");
    } finally {
      round.release();
    }
    assert.equal((await dispatchOnce(db.sql)).events, 2, "the next round reads the events again");
    assert.equal(await orphanDeliveries(), 0);
    assert.equal((await deliveriesOf(db.sql, table + "_kept")).length, 2);
    assert.equal((await deliveriesOf(db.sql, table + "_changed_renamed")).length, change === "rename" ? 2 : 0);
  });

  test(`a subscription's ${change} while a dispatch round is writing its deliveries waits for the round, then takes them along`, async () => {
    const table = `l3${change[0]}b`;
    await capturedTable(db.sql, table);
    await db.sql`insert into outbox.subscriptions (name, pattern, kind) values
      (${table + "_changed"}, ${`public.${table}.*`}, 'handler'), (${table + "_kept"}, ${`public.${table}.*`}, 'handler')`;
    await db.sql.unsafe(`insert into ${table} (id) values (1), (2)`);
    const round = await db.sql.reserve();
    let changing: Promise<unknown> | undefined;
    try {
      await round`begin isolation level repeatable read`;
      const [written] = await round<{ deliveries: number }[]>`select deliveries from outbox._dispatch()`;
      assert.equal(written!.deliveries, 4);
      changing = statement(table + "_changed").execute();
      await lockWaitOf(change === "delete" ? "delete from outbox.subscriptions" : "update outbox.subscriptions set name", `the ${change} to wait for the round`);
      await round`commit`;
    } finally {
      await round`rollback`.catch(() => undefined); // a no-op after the commit
      round.release();
    }
    await changing;
    assert.equal(await orphanDeliveries(), 0);
    assert.equal((await deliveriesOf(db.sql, table + "_kept")).length, 2);
    assert.equal((await deliveriesOf(db.sql, table + "_changed_renamed")).length, change === "rename" ? 2 : 0);
  });
}

test("a subscription deleted while replay creates its deliveries waits for the replay, then takes them along", async () => {
  await capturedTable(db.sql, "l3p");
  await db.sql`insert into outbox.subscriptions (name, pattern, kind, active) values ('l3p_replayed', 'public.l3p.*', 'handler', false)`;
  await db.sql`insert into l3p (id) values (1), (2)`;
  await dispatchOnce(db.sql); // while inactive: no deliveries, replay creates them
  const replay = await db.sql.reserve();
  let deleting: Promise<unknown> | undefined;
  try {
    await replay`begin`;
    const [{ n }] = await replay<{ n: number }[]>`select outbox.replay('l3p_replayed', now() - interval '1 hour') as n`;
    assert.equal(n, 2);
    deleting = db.sql`delete from outbox.subscriptions where name = 'l3p_replayed'`.execute();
    await lockWaitOf("delete from outbox.subscriptions", "the delete to wait for the replay");
    await replay`commit`;
  } finally {
    await replay`rollback`.catch(() => undefined); // a no-op after the commit
    replay.release();
  }
  await deleting;
  assert.equal(await orphanDeliveries(), 0);
});

test("a notify subscription inserted with plain SQL while the worker runs is served within a second, without a restart", async () => {
  await capturedTable(db.sql, "l4");
  // A slow safety-net poll: the subscription change notification must be what picks it up.
  const w = await startOutbox(db, () => undefined, { pollIntervalMs: 5000 });
  const listener = postgres(db.url, { max: 1, onnotice: () => undefined });
  const received: Array<{ at: number; payload: string }> = [];
  try {
    await listener.listen("l4_channel", (payload) => void received.push({ at: Date.now(), payload }));
    await db.sql`
      insert into outbox.subscriptions (name, pattern, kind, config) values ('l4_notify', 'public.l4.*', 'notify', '{"channel": "l4_channel"}')`;
    const insertedAt = Date.now();
    await db.sql`insert into l4 (id, status) values (1, 'small')`;
    await waitFor(async () => received.length >= 1, "the envelope on the channel", 5000);
    const latency = received[0]!.at - insertedAt;
    assert.ok(latency < 1000, `delivered ${latency} ms after the write`);
    const [stored] = await db.sql<{ id: string; payload: Record<string, unknown> }[]>`
      select id, payload from outbox.events where table_name = 'l4' and (key ->> 'id')::int = 1`;
    assert.deepEqual(JSON.parse(received[0]!.payload), stored!.payload, "the whole envelope");

    await db.sql`insert into l4 (id, body) values (2, ${"x".repeat(9000)})`;
    await waitFor(async () => received.length >= 2, "the second notification", 5000);
    const [big] = await db.sql<{ id: string; payload: unknown }[]>`
      select id, payload from outbox.events where table_name = 'l4' and (key ->> 'id')::int = 2`;
    assert.ok(JSON.stringify(big!.payload).length > 8000);
    assert.deepEqual(JSON.parse(received[1]!.payload), { id: big!.id, type: "public.l4.insert", truncated: true });
    await waitFor(async () => (await statusCounts(db.sql, "l4_notify")).delivered === 2, "both recorded as delivered");
  } finally {
    await listener.end({ timeout: 5 });
    await w.stop();
  }
});

test("subscription_status and dispatch_status show what is in line, dead, delivered and undispatched", async () => {
  await capturedTable(db.sql, "l5");
  await db.sql`insert into outbox.subscriptions (name, pattern, kind) values ('l5_unserved', 'public.l5.*', 'handler')`;
  const w = await startOutbox(db, (o) => {
    o.handle("l5_ok", "public.l5.*", () => undefined);
    o.handle("l5_dead", "public.l5.*", () => {
      throw new NonRetryableError("no");
    });
  });
  try {
    await db.sql`insert into l5 (id) values (1), (2), (3)`;
    await waitFor(async () => (await statusCounts(db.sql, "l5_ok")).delivered === 3, "l5_ok delivered");
    await waitFor(async () => (await statusCounts(db.sql, "l5_dead")).dead === 3, "l5_dead dead");
  } finally {
    await w.stop();
  }
  type Status = { subscription: string; kind: string; pattern: string; active: boolean; pending: number; retrying: number; delivering: number; dead: number; delivered_last_hour: number; oldest_pending_at: Date | null; oldest_pending_age_seconds: number | null };
  const status = await db.sql<Status[]>`
    select subscription, kind, pattern, active, pending::int, retrying::int, delivering::int, dead::int,
           delivered_last_hour::int, oldest_pending_at, oldest_pending_age_seconds::float8 as oldest_pending_age_seconds
    from outbox.subscription_status where subscription like 'l5\\_%' order by subscription`;
  const counts = status.map((s) => [s.subscription, s.pending, s.retrying, s.delivering, s.dead, s.delivered_last_hour]);
  assert.deepEqual(counts, [
    ["l5_dead", 0, 0, 0, 3, 0],
    ["l5_ok", 0, 0, 0, 0, 3],
    ["l5_unserved", 3, 0, 0, 0, 0],
  ]);
  const [dead, ok, unserved] = status;
  assert.equal(ok!.oldest_pending_at, null);
  assert.equal(dead!.oldest_pending_at, null, "dead deliveries are not waiting");
  assert.ok(unserved!.oldest_pending_at instanceof Date);
  assert.ok(unserved!.oldest_pending_age_seconds! >= 0 && unserved!.oldest_pending_age_seconds! < 60);
  assert.deepEqual([unserved!.kind, unserved!.pattern, unserved!.active], ["handler", "public.l5.*", true]);

  type Dispatch = { last_id: string | null; dispatched_at: Date | null; undispatched_events: number; lag_seconds: number | null };
  const dispatchStatus = async () =>
    (await db.sql<Dispatch[]>`
      select last_id::text, dispatched_at, undispatched_events::int, lag_seconds::float8 as lag_seconds from outbox.dispatch_status`)[0]!;
  await dispatchOnce(db.sql);
  const caughtUp = await dispatchStatus();
  assert.equal(caughtUp.undispatched_events, 0);
  assert.equal(caughtUp.lag_seconds, null);
  assert.ok(caughtUp.last_id !== null && BigInt(caughtUp.last_id) > 0n);
  assert.ok(caughtUp.dispatched_at instanceof Date && Date.now() - caughtUp.dispatched_at.getTime() < 60_000);

  await db.sql`insert into l5 (id) values (4), (5)`;
  await db.sql`insert into l5 (id) values (6)`;
  const behind = await dispatchStatus();
  assert.equal(behind.undispatched_events, 3, "three events not yet dispatched");
  assert.ok(behind.lag_seconds !== null && behind.lag_seconds >= 0 && behind.lag_seconds < 60);
  assert.equal(behind.last_id, caughtUp.last_id);

  await dispatchOnce(db.sql);
  const after = await dispatchStatus();
  assert.equal(after.undispatched_events, 0);
  assert.ok(BigInt(after.last_id!) > BigInt(caughtUp.last_id!));
  const [unservedNow] = await db.sql<{ pending: number }[]>`
    select pending::int from outbox.subscription_status where subscription = 'l5_unserved'`;
  assert.equal(unservedNow!.pending, 6);
});

test("retention removes delivered deliveries and fully delivered events, keeps what is still in line and the events it needs", async () => {
  await capturedTable(db.sql, "l6");
  // l6_idle: nobody serves it, so its delivery of event 3 stays pending.
  await db.sql`insert into outbox.subscriptions (name, pattern, kind, filter) values ('l6_idle', 'public.l6.*', 'handler', '$.new.id == 3')`;
  const w = await startOutbox(db, (o) => {
    o.handle("l6_ok", "public.l6.*", () => undefined);
    o.handle(
      "l6_fail",
      "public.l6.*",
      () => {
        throw new Error("still failing");
      },
      { filter: "$.new.id >= 2" },
    );
  });
  try {
    // One statement each: a statement's rows are stored together and pruned together.
    for (const id of [1, 2, 3]) await db.sql`insert into l6 (id) values (${id})`;
    await waitFor(async () => (await statusCounts(db.sql, "l6_ok")).delivered === 3, "l6_ok delivered");
    await waitFor(async () => (await statusCounts(db.sql, "l6_fail")).retrying === 2, "l6_fail retrying");
  } finally {
    await w.stop();
  }
  const before = await db.sql<{ subscription: string; status: string; row_id: number }[]>`
    select d.subscription, d.status, (e.key ->> 'id')::int as row_id from outbox.deliveries d
    join outbox.events e on e.id = d.event_id where e.table_name = 'l6' order by 1, 3`;
  assert.equal(before.length, 6);

  const [{ removed }] = await db.sql<{ removed: number }[]>`
    select outbox._prune(now() + interval '1 day', now() + interval '1 day', 1000) as removed`;
  assert.ok(removed >= 4, `at least 3 deliveries and 1 event removed (${removed})`);

  const deliveries = await db.sql<{ subscription: string; status: string; event_id: string }[]>`
    select subscription, status, event_id::text from outbox.deliveries where subscription like 'l6\\_%' order by subscription, event_position`;
  assert.deepEqual(deliveries.map((d) => [d.subscription, d.status]), [
    ["l6_fail", "retrying"],
    ["l6_fail", "retrying"],
    ["l6_idle", "pending"],
  ]);
  const events = await db.sql<{ id: string; row_id: number }[]>`
    select id::text, (key ->> 'id')::int as row_id from outbox.events where table_name = 'l6' order by position`;
  assert.deepEqual(events.map((e) => e.row_id), [2, 3], "event 1 was fully delivered; 2 and 3 are still needed");
  assert.ok(deliveries.every((d) => events.some((e) => e.id === d.event_id)), "every remaining delivery still has its event");
});

test("a handler that runs longer than the lease keeps its delivery: the lease is extended and no other worker takes it over", async () => {
  await capturedTable(db.sql, "l_long");
  const calls: number[] = [];
  const slowHandler = (worker: number) => async () => {
    calls.push(worker);
    // The behaviour under test: a handler busy for three leases.
    await new Promise((resolve) => setTimeout(resolve, 3000));
  };
  const options = { pollIntervalMs: 100, leaseMs: 1000 };
  const a = await startOutbox(db, (o) => o.handle("l_long_h", "public.l_long.insert", slowHandler(1)), options);
  const b = await startOutbox(db, (o) => o.handle("l_long_h", "public.l_long.insert", slowHandler(2)), options);
  try {
    await db.sql`insert into l_long (id) values (1)`;
    const [row] = await waitFor(async () => {
      const rows = await deliveriesOf(db.sql, "l_long_h");
      return rows[0]?.status === "delivered" ? rows : undefined;
    }, "the long delivery to be delivered", 15_000);
    assert.equal(calls.length, 1, `the handler ran once, not again on the other worker (calls by worker: ${calls.join(", ")})`);
    assert.equal(row!.attempts, 1);
    assert.equal(row!.last_error, null);
  } finally {
    await Promise.all([a.stop(), b.stop()]);
  }
});

test("a subscription's concurrency caps what is claimed across workers, also when written as 2.0", async () => {
  await capturedTable(db.sql, "l9");
  await db.sql`insert into outbox.subscriptions (name, pattern, kind, config) values ('l9_capped', 'public.l9.*', 'handler', '{"concurrency": 2.0}')`;
  await db.sql`insert into l9 (id) select g from generate_series(1, 3) g`;
  await dispatchOnce(db.sql);
  const claim = async (worker: string) =>
    (await db.sql`select id from outbox._delivery_claim(${worker}, 'l9_capped', 10, 60000)`).length;
  assert.equal(await claim("worker-a"), 2, "the first worker gets as many as the limit allows");
  assert.equal(await claim("worker-b"), 0, "another worker gets none while two are in flight");
  assert.deepEqual(await statusCounts(db.sql, "l9_capped"), { delivering: 2, pending: 1 });
});

test("an outcome from a worker whose lease passed to another is dropped; the new holder's outcome counts", async () => {
  await capturedTable(db.sql, "l10");
  await db.sql`insert into outbox.subscriptions (name, pattern, kind) values ('l10_sub', 'public.l10.*', 'handler')`;
  await db.sql`insert into l10 (id) values (1)`;
  await dispatchOnce(db.sql);
  const [{ id }] = await db.sql<{ id: string }[]>`select id::text from outbox._delivery_claim('worker-a', 'l10_sub', 10, 60000)`;
  // worker-a stalls past its lease; recovery puts the delivery back in line and worker-b takes it.
  await db.sql`update outbox.deliveries set locked_until = now() - interval '1 second' where id = ${id}`;
  await db.sql`select outbox._delivery_recover()`;
  await db.sql`update outbox.deliveries set next_attempt_at = now() where id = ${id}`;
  assert.equal((await db.sql`select id from outbox._delivery_claim('worker-b', 'l10_sub', 10, 60000)`).length, 1);

  assert.equal(await deliveryCompleteBatch(db.sql, "worker-a", [{ id, outcome: "delivered", error: null, status: null, retryAfterMs: null }]), 0, "worker-a's late outcome is dropped");
  assert.deepEqual(await statusCounts(db.sql, "l10_sub"), { delivering: 1 });
  assert.equal(await deliveryCompleteBatch(db.sql, "worker-b", [{ id, outcome: "delivered", error: null, status: null, retryAfterMs: null }]), 1);
  assert.deepEqual(await statusCounts(db.sql, "l10_sub"), { delivered: 1 });
  // The rule the outcome's match relies on: a lease has an owner exactly while delivering.
  await assert.rejects(db.sql`update outbox.deliveries set locked_by = 'worker-c' where id = ${id}`, /deliveries_locked_by_check/);
});

test("one outcome batch records mixed outcomes, and reads only its own deliveries even when the session planned it on an empty table", async () => {
  await db.sql`insert into outbox.subscriptions (name, pattern, kind, max_attempts) values ('l11_sub', 'l11.*', 'handler', 3)`;
  const conn = await db.sql.reserve();
  try {
    // The session's plan is made now, while the subscription has no delivery at all.
    await conn`select outbox._delivery_complete('w', '{}', '{}', '{}', '{}', '{}')`;
    // 2,000 deliveries held by worker w, attempt 1 (and one at its last attempt).
    await db.sql`
      insert into outbox.deliveries (event_id, event_position, subscription, status, attempts, locked_by, locked_until)
      select gen_random_uuid(), g, 'l11_sub', 'delivering', case when g = 5 then 3 else 1 end, 'w', now() + interval '1 minute'
      from generate_series(1, 2000) g`;
    const ids = await db.sql<{ id: string; pos: string }[]>`
      select id::text, event_position::text as pos from outbox.deliveries where subscription = 'l11_sub' and event_position <= 5 order by event_position`;
    const [one, two, three, four, five] = ids.map((r) => r.id) as [string, string, string, string, string];
    const { result: n, fetched } = await xactTableWork(conn, "outbox.deliveries", async () =>
      (await conn<{ n: number }[]>`
        select outbox._delivery_complete('w',
          ${"{" + [one, two, three, four, five].join(",") + "}"}::bigint[],
          '{delivered,retry,retry,dead,retry}', '{null,"HTTP 500: down","slow down","HTTP 400: bad",boom}',
          '{200,500,429,400,null}', '{null,null,30000,null,null}') as n`)[0]!.n);
    assert.equal(n, 5);
    assert.ok(fetched <= 50, `the batch read ${fetched} rows of outbox.deliveries for 5 outcomes, not the 2,000 held`);
    const rows = await db.sql<{ id: string; status: string; last_error: string | null; last_status: number | null; wait_s: number | null; delivered: boolean; locked_by: string | null }[]>`
      select id::text, status, last_error, last_status, extract(epoch from next_attempt_at - updated_at)::float8 as wait_s,
             delivered_at is not null as delivered, locked_by
      from outbox.deliveries where id in ${db.sql([one, two, three, four, five])} order by event_position`;
    assert.deepEqual(rows.map((r) => [r.status, r.last_error, r.last_status, r.delivered, r.locked_by]), [
      ["delivered", null, 200, true, null],
      ["retrying", "HTTP 500: down", 500, false, null],
      ["retrying", "slow down", 429, false, null],
      ["dead", "HTTP 400: bad", 400, false, null],
      ["dead", "boom", null, false, null], // its third attempt of three: a retry past max_attempts is dead
    ]);
    assert.ok(rows[1]!.wait_s! >= 0 && rows[1]!.wait_s! <= 2, "attempt 1 retries within 2 s (full jitter)");
    assert.equal(rows[2]!.wait_s, 30, "Retry-After overrides the backoff");
    assert.deepEqual(await statusCounts(db.sql, "l11_sub"), { delivered: 1, retrying: 2, dead: 2, delivering: 1995 });
  } finally {
    await conn`rollback`.catch(() => undefined);
    conn.release();
  }
});

test("two workers claiming at once from one backlog take disjoint deliveries, neither waiting for the other (SKIP LOCKED)", async () => {
  await capturedTable(db.sql, "l12");
  await db.sql`insert into outbox.subscriptions (name, pattern, kind) values ('l12_sub', 'public.l12.*', 'handler')`;
  await db.sql`insert into l12 (id) select g from generate_series(1, 100) g`;
  await dispatchOnce(db.sql);
  const a = await db.sql.reserve();
  const b = await db.sql.reserve();
  try {
    // A's claim stays uncommitted, its rows locked, while B claims.
    await a`begin`;
    const byA = await a<{ id: string }[]>`select id::text from outbox._delivery_claim('worker-a', 'l12_sub', 60, 60000)`;
    await b`begin`;
    await b`set local lock_timeout = '2s'`; // waiting on A's rows would fail here rather than hang
    const byB = await b<{ id: string }[]>`select id::text from outbox._delivery_claim('worker-b', 'l12_sub', 100, 60000)`;
    await b`commit`;
    await a`commit`;
    assert.equal(byA.length, 60);
    assert.equal(byB.length, 40, "B took the rest, skipping A's locked rows");
    const both = new Set([...byA, ...byB].map((r) => r.id));
    assert.equal(both.size, 100, "no delivery claimed twice");
    assert.deepEqual(await statusCounts(db.sql, "l12_sub"), { delivering: 100 });
  } finally {
    for (const c of [a, b]) {
      await c`rollback`.catch(() => undefined);
      c.release();
    }
  }
});
