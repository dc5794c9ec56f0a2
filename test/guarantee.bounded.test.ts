/**
 * DESIGN.md guarantee 6: bounded. Retention empties the tables of delivered work (and keeps
 * what is still owed), and a worker's connections stay within the budget documented in
 * src/outbox.ts: poolSize + 2 (dispatcher, listener) + graphilePoolSize.
 */
import assert from "node:assert/strict";
import { after, test } from "node:test";
import postgres, { type Sql } from "postgres";
import { createOutbox, type Outbox } from "../src/outbox.js";
import { NonRetryableError } from "../src/transports/handler.js";
import type { OutboxWorker } from "../src/worker/worker.js";
import { createTestDatabase, dropTestDatabase, useTestDatabase, waitFor, type TestDatabase } from "./harness.js";

// Registered before useTestDatabase's hooks, so it runs before the database is dropped.
const workers: OutboxWorker[] = [];
const outboxes: Outbox[] = [];
const clients: Sql[] = [];
const extraDatabases: TestDatabase[] = [];
after(async () => {
  for (const w of workers) await w.stop().catch(() => undefined);
  for (const o of outboxes) await o.close().catch(() => undefined);
  await Promise.all(clients.map((c) => c.end({ timeout: 5 }).catch(() => undefined)));
  for (const d of extraDatabases) await dropTestDatabase(d).catch(() => undefined);
});

const db = useTestDatabase();

async function count(sql: Sql, query: string): Promise<number> {
  const [row] = await sql.unsafe<{ n: number }[]>(`select count(*)::int as n from (${query}) q`);
  return row!.n;
}

/** Runs `outbox._prune` as if `days` had passed, until a batch removes less than the limit. */
async function pruneAsIfLater(sql: Sql, deliveredDays: number, deadDays: number): Promise<number> {
  let total = 0;
  for (;;) {
    const [{ n }] = await sql<{ n: number }[]>`
      select outbox._prune(now() + make_interval(days => ${deliveredDays}), now() + make_interval(days => ${deadDays}), 10000) as n`;
    total += n;
    if (n < 10000) return total;
  }
}

test("retention: once time passes, delivered and dead work leaves outbox._events and outbox.deliveries; what is still owed stays", async () => {
  await db.sql`create table ret (id int primary key, status text)`;
  await db.sql`select outbox.enable_capture('ret')`;
  // A subscription no worker serves: its deliveries stay pending, and retention must keep them.
  await db.sql`insert into outbox.subscriptions (name, pattern, kind) values ('parked', 'parked.*', 'handler')`;

  const outbox = createOutbox({ connectionString: db.url, worker: { pollIntervalMs: 200, leaseMs: 2000 } });
  outboxes.push(outbox);
  let handled = 0;
  outbox.handle("ret_all", "public.ret.*", () => {
    handled++;
  });
  outbox.handle("ret_poison", "public.ret.update", () => {
    throw new NonRetryableError("refused");
  });
  const worker = await outbox.start();
  workers.push(worker);

  await db.sql`insert into ret (id) select generate_series(1, 300)`; // one statement, many events
  for (let i = 1; i <= 20; i++) await db.sql`update ret set status = 'paid' where id = ${i}`;
  await db.sql`delete from ret where id > 290`;
  await db.sql`select outbox.emit('nobody.listens', '{}')`; // an event without any delivery
  const owed = 3;
  for (let i = 0; i < owed; i++) await db.sql`select outbox.emit('parked.thing', ${db.sql.json({ i })})`;

  const expectedDelivered = 300 + 20 + 10;
  await waitFor(
    async () =>
      (await count(db.sql, "select 1 from outbox.deliveries where subscription = 'ret_all' and status = 'delivered'")) === expectedDelivered &&
      (await count(db.sql, "select 1 from outbox.deliveries where subscription = 'ret_poison' and status = 'dead'")) === 20,
    "every ret_all delivery delivered and every ret_poison delivery dead",
    30_000,
  );
  assert.equal(handled, expectedDelivered);
  await waitFor(
    async () => (await count(db.sql, "select 1 from outbox.dispatch_status where undispatched_events = 0")) === 1,
    "dispatch caught up",
    10_000,
  );
  assert.ok((await count(db.sql, "select 1 from outbox._events")) > 0);

  // With a retention of one day, nothing is old enough yet.
  assert.equal(await pruneAsIfLater(db.sql, -1, -1), 0, "nothing is pruned before its retention passed");
  assert.equal(await count(db.sql, "select 1 from outbox.deliveries where subscription = 'ret_all'"), expectedDelivered, "recent work is kept");

  // A day later, with dead deliveries kept longer: delivered ones go, dead ones and their events stay.
  await pruneAsIfLater(db.sql, 1, -1);
  assert.equal(await count(db.sql, "select 1 from outbox.deliveries where subscription = 'ret_all'"), 0, "delivered deliveries are pruned");
  assert.equal(await count(db.sql, "select 1 from outbox.deliveries where subscription = 'ret_poison'"), 20, "dead deliveries wait for their own retention");

  // As in the brief: `now() + 1 day` for both.
  await db.sql`select outbox._prune(now() + interval '1 day', now() + interval '1 day', 10000)`;
  await pruneAsIfLater(db.sql, 1, 1);
  assert.equal(await count(db.sql, "select 1 from outbox.deliveries where status in ('delivered', 'dead')"), 0, "no delivered or dead delivery is left");
  const left = await db.sql<{ subscription: string; status: string; n: number }[]>`
    select subscription, status, count(*)::int as n from outbox.deliveries group by 1, 2 order by 1, 2`;
  assert.deepEqual(left.map((r) => ({ ...r })), [{ subscription: "parked", status: "pending", n: owed }], "only undelivered work is left");
  const eventsLeft = await db.sql<{ topic: string }[]>`select topic from outbox.events order by position`;
  assert.deepEqual(eventsLeft.map((e) => e.topic), Array(owed).fill("parked.thing"), "outbox._events keeps only the events still owed");

  // Once the owed work is gone too, the tables are empty.
  await db.sql`delete from outbox.subscriptions where name = 'parked'`;
  await pruneAsIfLater(db.sql, 1, 1);
  assert.equal(await count(db.sql, "select 1 from outbox._events"), 0, "outbox._events is empty");
  assert.equal(await count(db.sql, "select 1 from outbox.deliveries"), 0, "outbox.deliveries is empty");

  // The worker keeps working on pruned tables.
  await db.sql`insert into ret (id) values (1000)`;
  await waitFor(async () => handled === expectedDelivered + 1, "a new event after pruning", 10_000);
  await worker.stop();
  await outbox.close();
});

test("a worker's connections stay within poolSize + 2 + graphilePoolSize under load, and are all closed by stop()", async (t) => {
  // A database of this test's own, so every other connection to it is the worker's: the
  // test's own client is told apart by its application_name.
  const own = await createTestDatabase();
  extraDatabases.push(own);
  const appName = "guarantee-bounded-test";
  const mine = postgres(own.url, { max: 2, onnotice: () => undefined, connection: { application_name: appName } });
  clients.push(mine);
  const monitor = postgres(process.env.DATABASE_URL!, { max: 1, onnotice: () => undefined });
  clients.push(monitor);
  const workerConnections = async () => {
    const [row] = await monitor<{ n: number }[]>`
      select count(*)::int as n from pg_stat_activity
      where datname = ${own.name} and backend_type = 'client backend' and application_name is distinct from ${appName}`;
    return row!.n;
  };
  assert.equal(await workerConnections(), 0, "nothing else is connected to the test's database");

  const poolSize = 3;
  const graphilePoolSize = 2;
  const budget = poolSize + 2 + graphilePoolSize;
  await mine`create table load (id int primary key)`;
  await mine`select outbox.enable_capture('load', operations => '{insert}')`;
  const outbox = createOutbox({ sql: mine, worker: { poolSize, graphilePoolSize, pollIntervalMs: 200, leaseMs: 5000 } });
  outboxes.push(outbox);
  const seen = new Set<number>();
  for (const name of ["load_a", "load_b", "load_c", "load_d"]) {
    outbox.handle(name, "public.load.insert", async (event) => {
      await new Promise((r) => setTimeout(r, 5 + Math.random() * 20)); // keep deliveries in flight
      if (name === "load_a") seen.add(Number((event.key as { id: number }).id));
    });
  }

  let max = 0;
  let samples = 0;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      max = Math.max(max, await workerConnections());
      samples++;
      await new Promise((r) => setTimeout(r, 10)); // sampling interval
    }
  })();

  const worker = await outbox.start();
  workers.push(worker);
  const N = 600;
  const writers = Array.from({ length: 4 }, async (_, w) => {
    const c = postgres(own.url, { max: 1, onnotice: () => undefined, connection: { application_name: appName } });
    try {
      for (let i = w; i < N; i += 4) await c`insert into load (id) values (${i})`;
    } finally {
      await c.end();
    }
  });
  await Promise.all(writers);
  await waitFor(async () => seen.size === N, "every event delivered to load_a", 60_000);
  await waitFor(
    async () => (await mine`select 1 from outbox.deliveries where status <> 'delivered'`).length === 0,
    "every delivery recorded",
    30_000,
  );
  // The cron-driven maintenance and idle polling also run within the budget.
  const duringRun = max;
  await worker.stop();
  sampling = false;
  await sampler;
  t.diagnostic(`max connections of the worker ${duringRun} (budget ${budget}) over ${samples} samples`);
  assert.ok(duringRun >= 3, `the sampler saw the worker's connections (${duringRun})`);
  assert.ok(max <= budget, `at most poolSize + 2 + graphilePoolSize = ${budget} connections (saw ${max})`);

  await waitFor(async () => (await workerConnections()) === 0, "the stopped worker's connections to close", 10_000).catch(async (error: Error) => {
    const rows = await monitor`select application_name, state, left(query, 60) as query from pg_stat_activity where datname = ${own.name}`;
    throw new Error(`${error.message}: ${JSON.stringify(rows)}`);
  });
  await outbox.close();
});
