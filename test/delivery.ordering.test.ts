import assert from "node:assert/strict";
import { test } from "node:test";
import { pino } from "pino";
import { createOutbox } from "../src/outbox.js";
import type { OutboxEvent } from "../src/transports/transport.js";
import { useTestDatabase, waitFor } from "./harness.js";
import { capturedTable, deliveriesOf, hastenRetries, startOutbox, statusCounts, testWorkerOptions, workerMarkedIdle } from "./deliveryHelpers.js";

const db = useTestDatabase();

type Row = { id: number; version: number };
const rowOf = (event: OutboxEvent) => event.new as unknown as Row;

test("an ordered subscription delivers each key's events in commit order; a failing event blocks only its key", async () => {
  await capturedTable(db.sql, "o1");
  // Every call of the handler, and whether it succeeded.
  const calls: Array<{ key: number; version: number; ok: boolean }> = [];
  let aFailures = 0;
  let bDone = false;
  const w = await startOutbox(db, (o) =>
    o.handle(
      "o1_ordered",
      "public.o1.*",
      (event) => {
        const { id, version } = rowOf(event);
        // Key A's first event fails until key B's events all arrived, and at least 3 times.
        if (id === 1 && version === 1 && (!bDone || aFailures < 3)) {
          aFailures++;
          calls.push({ key: id, version, ok: false });
          throw new Error(`A v1 fails (${aFailures})`);
        }
        calls.push({ key: id, version, ok: true });
        if (id === 2 && version === 3) bDone = true;
      },
      { ordered: true },
    ),
  );
  try {
    const [{ ordered }] = await db.sql<{ ordered: boolean }[]>`select ordered from outbox.subscriptions where name = 'o1_ordered'`;
    assert.equal(ordered, true);
    // Commit order: A1 B1 A2 B2 A3 B3, each its own transaction.
    await db.sql`insert into o1 (id) values (1)`;
    await db.sql`insert into o1 (id) values (2)`;
    for (const version of [2, 3]) {
      await db.sql`update o1 set version = ${version} where id = 1`;
      await db.sql`update o1 set version = ${version} where id = 2`;
    }

    await waitFor(async () => bDone, "key B's events to be delivered while key A fails");
    const delivered = (key: number) => calls.filter((c) => c.key === key && c.ok).map((c) => c.version);
    assert.deepEqual(delivered(2), [1, 2, 3], "key B in commit order");
    assert.deepEqual(delivered(1), [], "nothing of key A while its first event fails");
    const aRows = (await deliveriesOf(db.sql, "o1_ordered")).filter((r) => r.row_id === 1);
    assert.equal(aRows.length, 3);
    assert.ok(["retrying", "delivering"].includes(aRows[0]!.status), `A1 is being retried (${aRows[0]!.status})`);
    assert.deepEqual(aRows.slice(1).map((r) => [r.status, r.attempts]), [["pending", 0], ["pending", 0]], "A2 and A3 wait for A1");

    await waitFor(async () => {
      await hastenRetries(db.sql, "o1_ordered");
      return delivered(1).length === 3;
    }, "key A's events to be delivered after its first succeeds");
    assert.deepEqual(delivered(1), [1, 2, 3], "key A in commit order");
    assert.ok(aFailures >= 3);
    const firstA1Success = calls.findIndex((c) => c.key === 1 && c.ok);
    assert.equal(calls[firstA1Success]!.version, 1);
    assert.ok(
      calls.slice(0, firstA1Success).every((c) => c.key !== 1 || c.version === 1),
      "no later event of key A was attempted before its first was delivered",
    );
    const lastB = calls.findLastIndex((c) => c.key === 2);
    assert.ok(lastB < firstA1Success, "key B was not held back by key A");

    await waitFor(async () => (await statusCounts(db.sql, "o1_ordered")).delivered === 6, "all six recorded as delivered");
    const rows = await deliveriesOf(db.sql, "o1_ordered");
    assert.equal(rows.find((r) => r.row_id === 1 && r.op === "insert")!.attempts, aFailures + 1);
    assert.ok(rows.filter((r) => !(r.row_id === 1 && r.op === "insert")).every((r) => r.attempts === 1));
  } finally {
    await w.stop();
  }
});

test("in an ordered subscription a dead event stops blocking its key", async () => {
  await capturedTable(db.sql, "o2");
  const seen: Row[] = [];
  let failures = 0;
  const w = await startOutbox(db, (o) =>
    o.handle(
      "o2_ordered",
      "public.o2.*",
      (event) => {
        const row = rowOf(event);
        if (row.id === 1 && row.version === 1) {
          failures++;
          throw new Error("first event of key 1 fails");
        }
        seen.push(row);
      },
      { ordered: true, maxAttempts: 1 },
    ),
  );
  try {
    await db.sql`insert into o2 (id) values (1)`;
    await db.sql`update o2 set version = 2 where id = 1`;
    await db.sql`update o2 set version = 3 where id = 1`;
    await waitFor(async () => seen.length === 2, "the later events of key 1 to be delivered");
    assert.deepEqual(seen.map((r) => [r.id, r.version]), [[1, 2], [1, 3]], "the rest of key 1, in order");
    assert.equal(failures, 1, "max_attempts 1: one attempt");
    const rows = await waitFor(async () => {
      const r = await deliveriesOf(db.sql, "o2_ordered");
      return r.every((d) => d.status === "dead" || d.status === "delivered") ? r : undefined;
    }, "outcomes to be recorded");
    assert.deepEqual(rows.map((r) => [r.op, r.status, r.attempts]), [
      ["insert", "dead", 1],
      ["update", "delivered", 1],
      ["update", "delivered", 1],
    ]);
    assert.equal(rows[0]!.last_error, "first event of key 1 fails");
  } finally {
    await w.stop();
  }
});

test("a failing subscription does not slow a healthy one", async () => {
  await capturedTable(db.sql, "o3");
  const n = 200;
  const healthy = new Set<number>();
  let failingCalls = 0;
  const w = await startOutbox(db, (o) => {
    o.handle("o3_failing", "public.o3.*", () => {
      failingCalls++;
      throw new Error("endpoint down");
    });
    o.handle("o3_healthy", "public.o3.*", (event) => {
      healthy.add(rowOf(event).id);
    });
  });
  try {
    const started = Date.now();
    // Half in one statement, half one transaction each.
    await db.sql`insert into o3 (id) select g from generate_series(1, ${n / 2}) g`;
    for (let id = n / 2 + 1; id <= n; id++) await db.sql`insert into o3 (id) values (${id})`;
    await waitFor(async () => healthy.size === n, `the healthy subscription to get all ${n} events`);
    const elapsed = Date.now() - started;
    assert.ok(elapsed < 5000, `the healthy subscription got them in ${elapsed} ms`);
    assert.ok(failingCalls >= 1, "the failing subscription was attempted meanwhile");

    await waitFor(async () => (await statusCounts(db.sql, "o3_healthy")).delivered === n, "healthy deliveries recorded");
    // Dispatch wrote both subscriptions' deliveries together; the failing ones are all still in line.
    const failing = await statusCounts(db.sql, "o3_failing");
    assert.equal((failing.retrying ?? 0) + (failing.delivering ?? 0) + (failing.pending ?? 0), n);
    assert.equal(failing.delivered, undefined, "nothing of the failing subscription was delivered");
    assert.equal(failing.dead, undefined, "and nothing is dead yet: it keeps retrying");
    const [{ retried }] = await db.sql<{ retried: number }[]>`
      select count(*)::int as retried from outbox.deliveries
      where subscription = 'o3_failing' and attempts >= 1 and last_error = 'endpoint down'`;
    assert.ok(retried >= 1, "failing deliveries carry their error");
  } finally {
    await w.stop();
  }
});

test("a subscription whose claim raises in every round does not hold up a healthy one: the worker's rounds still finish, it goes idle, and each write wakes it", async () => {
  await capturedTable(db.sql, "o4");
  // A subscription whose every claim raises a real error: a trigger of the test's own refuses
  // to let its deliveries become `delivering`. With a concurrency limit, dispatch does not
  // claim for it, so only the deliverer's per-subscription claim (pumpAll) meets the error.
  await db.sql.unsafe(`
    create function o4_refuse_claim() returns trigger language plpgsql as $$
    begin
      raise exception 'o4_broken refuses to be claimed';
    end $$;
    create trigger o4_refuse_claim before update on outbox.deliveries for each row
      when (new.subscription = 'o4_broken' and new.status = 'delivering') execute function o4_refuse_claim();`);
  await db.sql`
    insert into outbox.subscriptions (name, pattern, kind, config)
    values ('o4_broken', 'public.o4.*', 'notify', '{"channel": "o4_broken", "concurrency": 1}')`;

  const errors: Array<{ msg: string; subscription?: string; err?: { message?: string } }> = [];
  const logger = pino({ level: "error" }, { write: (line: string) => void errors.push(JSON.parse(line)) });
  const healthy: number[] = [];
  // A 60 s poll: within this test only a wake-up, which needs a round that finished and
  // marked the worker idle, delivers a write.
  const outbox = createOutbox({ connectionString: db.url, logger, worker: { ...testWorkerOptions, pollIntervalMs: 60_000 } });
  outbox.handle("o4_healthy", "public.o4.*", (event) => void healthy.push(rowOf(event).id));
  const worker = await outbox.start();
  try {
    await waitFor(
      () => workerMarkedIdle(db.sql, worker.id),
      "the worker to finish a round and mark itself idle although o4_broken's claim raises in every round",
    );
    for (const id of [1, 2, 3]) {
      await db.sql`insert into o4 (id) values (${id})`;
      await waitFor(async () => healthy.includes(id), `the healthy subscription to get row ${id} from a wake-up, not the 60 s poll`, 5000);
    }
    await waitFor(async () => (await statusCounts(db.sql, "o4_healthy")).delivered === 3, "the healthy deliveries recorded");

    const claimErrors = errors.filter((e) => e.msg === "could not claim deliveries" && e.subscription === "o4_broken");
    assert.ok(claimErrors.length >= 1, `the worker's claims of o4_broken failed (errors logged: ${JSON.stringify(errors.map((e) => e.msg))})`);
    assert.match(claimErrors[0]!.err?.message ?? "", /o4_broken refuses to be claimed/);
    assert.deepEqual(
      (await deliveriesOf(db.sql, "o4_broken")).map((d) => [d.row_id, d.status, d.attempts]),
      [[1, "pending", 0], [2, "pending", 0], [3, "pending", 0]],
      "o4_broken's deliveries were written and never claimed",
    );
  } finally {
    await worker.stop();
    await outbox.close();
  }
});
