import assert from "node:assert/strict";
import { test } from "node:test";
import type { OutboxEvent } from "../src/transports/transport.js";
import { useTestDatabase, waitFor } from "./harness.js";
import { capturedTable, startOutbox, statusCounts } from "./deliveryHelpers.js";

const db = useTestDatabase();

const idOf = (event: OutboxEvent) => Number((event.key as { id: number }).id);

/** Concurrent writers of the stream: enough that a commit lands during every worker round. */
const WRITERS = 4;
/** Writes counted after the worker said it is busy. */
const STREAM_WRITES = 1200;

test("under a steady stream of writes a busy worker is not notified on every write; once idle again, one write notifies", async () => {
  await capturedTable(db.sql, "wk1");
  const delivered = new Set<number>();
  const w = await startOutbox(db, (o) => o.handle("wk1_h", "public.wk1.*", (event) => void delivered.add(idOf(event))));
  // Every notification on the wake channel, in commit order (one queue for the whole server).
  const received: string[] = [];
  const listener = await db.sql.listen("outbox_wake", (payload) => received.push(payload));
  // A notification of the test's own, committed after the writes it follows: once it arrives,
  // every notification of those writes has arrived too.
  let sentinels = 0;
  const drainNotifications = async (): Promise<number> => {
    const sentinel = `sentinel-${++sentinels}`;
    await db.sql`select pg_notify('outbox_wake', ${sentinel})`;
    await waitFor(async () => received.includes(sentinel), `notification ${sentinel}`);
    return received.filter((p) => !p.startsWith("sentinel-")).length;
  };
  const workerIdle = async () =>
    (await db.sql`select from outbox._workers where id = ${w.worker.id} and idle_until > now()`).length === 1;
  try {
    await waitFor(workerIdle, "the started worker to mark itself idle");

    let writes = 0;
    let stop = false;
    let nextId = 0;
    const writers = Array.from({ length: WRITERS }, async () => {
      while (!stop) {
        await db.sql`insert into wk1 (id) values (${++nextId})`;
        writes++;
      }
    });
    try {
      // Under the stream the worker's rounds keep finding new events, and after two such
      // rounds in a row it clears its idle mark. Counting starts there: the writes before it,
      // which may notify, are the start of the stream, not a busy worker.
      await waitFor(
        async () => (await db.sql`select from outbox._workers where id = ${w.worker.id} and idle_until is null`).length === 1,
        "the worker to mark itself busy under the stream",
      );
      const notifiedBefore = await drainNotifications();
      const writesBefore = writes;
      await waitFor(async () => writes >= writesBefore + STREAM_WRITES, `${STREAM_WRITES} more writes`, 60_000);
      stop = true;
      await Promise.all(writers);
      const streamWrites = writes - writesBefore;
      const notified = (await drainNotifications()) - notifiedBefore;
      // A writer notifies only while an idle mark is live. The worker sets one again only
      // after a round that found no new event (a pause in the stream longer than a round),
      // and clears it two rounds after the next write: a handful of notifications per pause,
      // 18 to 64 per 1,200 writes in runs here (1.5-5 %). A worker notified while busy gets
      // one per write (100 %). A quarter of the writes lies well apart from both.
      assert.ok(
        notified <= streamWrites / 4,
        `a busy worker is not notified on every write: ${notified} notifications for ${streamWrites} writes`,
      );
    } finally {
      stop = true;
      await Promise.all(writers);
    }
    await waitFor(async () => delivered.size === writes, `all ${writes} writes delivered`, 60_000);

    await waitFor(workerIdle, "the worker to mark itself idle again after the stream");
    const notifiedIdle = await drainNotifications();
    await db.sql`insert into wk1 (id) values (${++nextId})`;
    assert.equal((await drainNotifications()) - notifiedIdle, 1, "a single write to an idle worker notifies it");
    await waitFor(async () => delivered.has(nextId), "the single write delivered");
    await waitFor(async () => (await statusCounts(db.sql, "wk1_h")).delivered === nextId, "every delivery recorded");
  } finally {
    await listener.unlisten();
    await w.stop();
  }
});

test("without the poll, a worker that is not the dispatcher gets its deliveries from wake-ups: a lone write and a stream", async () => {
  await capturedTable(db.sql, "wk2");
  const toA = new Set<number>();
  const toB = new Set<number>();
  // A 60 s poll: within this test, only wake-ups and the workers' own reads move anything.
  const noPoll = { pollIntervalMs: 60_000, leaseMs: 2000 };
  const a = await startOutbox(db, (o) => o.handle("wk2_a", "public.wk2.*", (event) => void toA.add(idOf(event))), noPoll);
  await waitFor(async () => (await db.sql`
    select from pg_locks l join pg_database d on d.oid = l.database
    where l.locktype = 'advisory' and l.granted and d.datname = current_database()`).length > 0, "worker A to take the dispatcher role");
  const b = await startOutbox(db, (o) => o.handle("wk2_b", "public.wk2.*", (event) => void toB.add(idOf(event))), noPoll);
  try {
    await db.sql`insert into wk2 (id) values (1)`;
    await waitFor(async () => toA.has(1) && toB.has(1), "both handlers to get the lone write", 3000);

    // A stream from 4 writers: B, busy, keeps claiming while its claims find work, and is
    // woken again whenever it went idle.
    let nextId = 1;
    await Promise.all(
      Array.from({ length: 4 }, async () => {
        for (let i = 0; i < 100; i++) await db.sql`insert into wk2 (id) values (${++nextId})`;
      }),
    );
    await waitFor(async () => toA.size === nextId && toB.size === nextId, `both handlers to get all ${nextId} writes`, 5000);
  } finally {
    await b.stop();
    await a.stop();
  }
});

test("without the poll, the dispatching worker claims the deliveries its dispatch left for claiming (an ordered subscription): lone writes", async () => {
  await capturedTable(db.sql, "wk3");
  const delivered: number[] = [];
  const w = await startOutbox(
    db,
    (o) => o.handle("wk3_ordered", "public.wk3.*", (event) => void delivered.push(idOf(event)), { ordered: true }),
    { pollIntervalMs: 60_000, leaseMs: 2000 },
  );
  try {
    await waitFor(async () => (await db.sql`select from outbox._workers where id = ${w.worker.id} and idle_until > now()`).length === 1, "the worker to mark itself idle");
    for (let id = 1; id <= 3; id++) {
      await db.sql`insert into wk3 (id) values (${id})`;
      await waitFor(async () => delivered.includes(id), `lone write ${id} to be delivered`, 3000);
    }
    assert.deepEqual(delivered, [1, 2, 3]);
  } finally {
    await w.stop();
  }
});
