import assert from "node:assert/strict";
import { test } from "node:test";
import type { OutboxEvent } from "../src/transports/transport.js";
import { useTestDatabase, waitFor } from "./harness.js";
import { capturedTable, startOutbox, statusCounts, workerMarkedIdle } from "./deliveryHelpers.js";

const db = useTestDatabase();

const idOf = (event: OutboxEvent) => Number((event.key as { id: number }).id);

/** Concurrent writers of the stream: enough that a commit lands during every worker round. */
const WRITERS = 4;
/** Writes counted after the worker said it is busy. */
const STREAM_WRITES = 1200;

/**
 * `writers` writers (default {@link WRITERS}) inserting ids `from` + 1, + 2 … into `table`
 * until stopped, each pausing `pauseMs` after every write (default none).
 */
function startStream(
  table: string, { writers: count = WRITERS, pauseMs = 0, from = 0 } = {},
): { readonly writes: number; readonly lastId: number; stop: () => Promise<void> } {
  let writes = 0;
  let stopped = false;
  const writers = Array.from({ length: count }, async () => {
    while (!stopped) {
      await db.sql`insert into ${db.sql(table)} (id) values (${from + ++writes})`;
      if (pauseMs > 0) await new Promise((resolve) => setTimeout(resolve, pauseMs));
    }
  });
  return {
    get writes() {
      return writes;
    },
    get lastId() {
      return from + writes;
    },
    stop: async () => {
      stopped = true;
      await Promise.all(writers);
    },
  };
}

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
  const workerIdle = () => workerMarkedIdle(db.sql, w.worker.id);
  try {
    await waitFor(workerIdle, "the started worker to mark itself idle");

    const stream = startStream("wk1");
    try {
      // Under the stream the worker's rounds keep finding new events, and after two such
      // rounds in a row it clears its idle mark. Counting starts there: the writes before it,
      // which may notify, are the start of the stream, not a busy worker.
      await waitFor(
        async () => (await db.sql`select from outbox._workers where id = ${w.worker.id} and idle_until is null`).length === 1,
        "the worker to mark itself busy under the stream",
      );
      const notifiedBefore = await drainNotifications();
      const writesBefore = stream.writes;
      await waitFor(async () => stream.writes >= writesBefore + STREAM_WRITES, `${STREAM_WRITES} more writes`, 60_000);
      await stream.stop();
      const streamWrites = stream.writes - writesBefore;
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
      await stream.stop();
    }
    const writes = stream.writes;
    await waitFor(async () => delivered.size === writes, `all ${writes} writes delivered`, 60_000);

    await waitFor(workerIdle, "the worker to mark itself idle again after the stream");
    const notifiedIdle = await drainNotifications();
    const lone = writes + 1;
    await db.sql`insert into wk1 (id) values (${lone})`;
    assert.equal((await drainNotifications()) - notifiedIdle, 1, "a single write to an idle worker notifies it");
    await waitFor(async () => delivered.has(lone), "the single write delivered");
    await waitFor(async () => (await statusCounts(db.sql, "wk1_h")).delivered === lone, "every delivery recorded");
  } finally {
    await listener.unlisten();
    await w.stop();
  }
});

test("a thin stream (a write every ~12 ms) after a dense one does not keep the worker busy: it marks itself idle while the writes go on", async () => {
  await capturedTable(db.sql, "wk6");
  const delivered = new Set<number>();
  // No poll: only the wake-ups and the busy worker's own reading move events.
  const w = await startOutbox(db, (o) => o.handle("wk6_h", "public.wk6.*", (event) => void delivered.add(idOf(event))), { pollIntervalMs: 60_000 });
  const workerIdle = () => workerMarkedIdle(db.sql, w.worker.id);
  let thin: ReturnType<typeof startStream> | undefined;
  try {
    await waitFor(workerIdle, "the started worker to mark itself idle");
    const dense = startStream("wk6");
    try {
      await waitFor(async () => !(await workerIdle()), "the worker to mark itself busy under the dense stream");
    } finally {
      await dense.stop();
    }
    // About 80 writes a second: a busy worker's 50 ms pause gathers four or so, which kept it
    // pausing (and unwoken) for as long as they came, each waiting up to 50 ms. Below 200 a
    // second it goes idle instead, and each write wakes it.
    thin = startStream("wk6", { writers: 1, pauseMs: 10, from: dense.lastId });
    await waitFor(workerIdle, "the worker to mark itself idle while a write still comes every ~12 ms", 10_000);
    await thin.stop();
    const last = thin.lastId;
    await waitFor(async () => delivered.size === last, `all ${last} writes delivered`, 60_000);
  } finally {
    await thin?.stop();
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
    await waitFor(() => workerMarkedIdle(db.sql, w.worker.id), "the worker to mark itself idle");
    for (let id = 1; id <= 3; id++) {
      await db.sql`insert into wk3 (id) values (${id})`;
      await waitFor(async () => delivered.includes(id), `lone write ${id} to be delivered`, 3000);
    }
    assert.deepEqual(delivered, [1, 2, 3]);
  } finally {
    await w.stop();
  }
});

test("without the poll, a write whose trigger found the worker busy and that commits after the worker went idle and read for the last time is delivered", async () => {
  await capturedTable(db.sql, "wk4");
  const delivered = new Set<number>();
  const w = await startOutbox(db, (o) => o.handle("wk4_h", "public.wk4.*", (event) => void delivered.add(idOf(event))), {
    pollIntervalMs: 60_000,
    leaseMs: 2000,
  });
  const mark = (conn: typeof db.sql) =>
    conn<{ heartbeatAt: Date; idle: boolean }[]>`
      select heartbeat_at as "heartbeatAt", idle_until is not null as idle from outbox._workers where id = ${w.worker.id}`;
  const late = await db.sql.reserve();
  try {
    await waitFor(async () => (await mark(db.sql))[0]?.idle, "the started worker to mark itself idle");
    const stream = startStream("wk4");
    try {
      await waitFor(async () => !(await mark(db.sql))[0]?.idle, "the worker to mark itself busy under the stream");
      // The late writer's trigger must find no idle mark, so that its commit sends no wake-up.
      // Each write of the mark also moves heartbeat_at: the same busy row before and after the
      // insert means the trigger, which ran between them, found the worker busy.
      let raced = false;
      for (let attempt = 0; attempt < 20 && !raced; attempt++) {
        await late`begin`;
        const [before] = await mark(late);
        await late`insert into wk4 (id) values (${-1})`;
        const [after] = await mark(late);
        raced = !before!.idle && !after!.idle && before!.heartbeatAt.getTime() === after!.heartbeatAt.getTime();
        if (!raced) await late`rollback`;
      }
      assert.ok(raced, "the late writer's insert ran while the worker was marked busy");
    } finally {
      await stream.stop();
    }
    await waitFor(async () => delivered.size === stream.writes, "the stream delivered");
    // The worker marks itself idle, then reads once more: wait for that read to end (a
    // dispatcher round that finished after the mark was written) before the late commit.
    await waitFor(async () => {
      const [m] = await mark(db.sql);
      if (!m?.idle) return false;
      const rounds = await db.sql`
        select from pg_stat_activity
        where datname = current_database() and application_name = 'pg-outbox dispatcher'
          and state = 'idle' and state_change > ${m.heartbeatAt}`;
      return rounds.length === 1;
    }, "the worker to mark itself idle and read once more");
    await late`commit`;
    await waitFor(async () => delivered.has(-1), "the late write to be delivered", 3000);
  } finally {
    late.release();
    await w.stop();
  }
});

test("with a poll slower than the idle mark's lifetime, an idle worker keeps its mark live", async () => {
  const w = await startOutbox(db, () => undefined, { pollIntervalMs: 60_000, leaseMs: 2000, idleTtlMs: 1000 });
  const idleUntil = async () =>
    (await db.sql<{ at: Date | null }[]>`select idle_until as at from outbox._workers where id = ${w.worker.id}`)[0]?.at ?? null;
  try {
    const first = await waitFor(idleUntil, "the started worker to mark itself idle");
    // Past the first mark's lapse (a second after it was written), the worker is still marked idle.
    const [state] = await waitFor(async () => {
      const rows = await db.sql<{ pastFirst: boolean; live: boolean }[]>`
        select now() > ${first} as "pastFirst", coalesce(idle_until > now(), false) as live
        from outbox._workers where id = ${w.worker.id}`;
      return rows[0]?.pastFirst ? rows : null;
    }, "the first idle mark to lapse", 3000);
    assert.ok(state!.live, "the idle mark was refreshed before it lapsed");
  } finally {
    await w.stop();
  }
});
