/**
 * DESIGN.md guarantee 3: no skipped events. Transactions take their event ids before they
 * commit and commit out of order; dispatch must neither skip a late committer's events nor
 * wait for a long-running writer before delivering everybody else's.
 */
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import postgres, { type Sql } from "postgres";
import { createOutbox, type Outbox } from "../src/outbox.js";
import type { OutboxWorker } from "../src/worker/worker.js";
import { useTestDatabase, waitFor } from "./harness.js";

const clients: Sql[] = [];
const workers: OutboxWorker[] = [];
const outboxes: Outbox[] = [];
// Registered before useTestDatabase's hooks, so it runs before the database is dropped.
// stop() and close() are idempotent: a test that failed half-way leaves nothing running.
after(async () => {
  for (const w of workers) await w.stop().catch(() => undefined);
  for (const o of outboxes) await o.close().catch(() => undefined);
  await Promise.all(clients.map((c) => c.end({ timeout: 5 }).catch(() => undefined)));
});

const db = useTestDatabase();

function client(): Sql {
  const c = postgres(db.url, { max: 1, onnotice: () => undefined });
  clients.push(c);
  return c;
}

const randomInt = (max: number) => Math.floor(Math.random() * max);

/** Delivered events, as the handler saw them. */
interface Seen {
  rowId: number;
  at: number;
}

test("8 writers committing out of order, with rollbacks, savepoints and one long transaction: every committed event is delivered exactly once", async (t) => {
  await db.sql`create table stress (id bigint primary key, writer int not null, note text)`;
  await db.sql`select outbox.enable_capture('stress', operations => '{insert}')`;

  const outbox = createOutbox({ connectionString: db.url, worker: { pollIntervalMs: 200, leaseMs: 30_000 } });
  outboxes.push(outbox);
  const seen = new Map<string, Seen[]>();
  outbox.handle("no_skip", "public.stress.insert", (event) => {
    const rowId = Number((event.key as { id: number }).id);
    seen.set(event.id, [...(seen.get(event.id) ?? []), { rowId, at: Date.now() }]);
  });
  const worker = await outbox.start();
  workers.push(worker);

  const committed = new Set<number>();
  const rolledBack = new Set<number>();
  const stats = { commits: 0, rollbacks: 0, savepointRollbacks: 0 };

  // The long transaction: inserts first (smallest ids, an early xid), commits near the end.
  const longConn = await client().reserve();
  await longConn`begin`;
  const longIds = [1, 2, 3];
  await longConn`insert into stress (id, writer, note) select g, -1, 'long' from unnest(${longIds}::bigint[]) g`;

  const WRITERS = 8;
  const TX_PER_WRITER = 110;
  const writer = async (w: number) => {
    const conn = await client().reserve();
    let next = (w + 1) * 1_000_000;
    try {
      for (let i = 0; i < TX_PER_WRITER; i++) {
        const mine: number[] = [];
        const undone: number[] = [];
        await conn`begin`;
        // One to three rows per statement: a stored _events row can hold several events.
        const first = Array.from({ length: 1 + randomInt(3) }, () => next++);
        await conn`insert into stress (id, writer) select g, ${w} from unnest(${first}::bigint[]) g`;
        mine.push(...first);
        if (Math.random() < 0.25) {
          await conn`savepoint sp`;
          const inner = [next++, next++];
          await conn`insert into stress (id, writer, note) select g, ${w}, 'savepoint' from unnest(${inner}::bigint[]) g`;
          if (Math.random() < 0.5) {
            await conn`rollback to savepoint sp`;
            undone.push(...inner);
            stats.savepointRollbacks++;
          } else {
            await conn`release savepoint sp`;
            mine.push(...inner);
          }
          const afterSp = next++;
          await conn`insert into stress (id, writer) values (${afterSp}, ${w})`;
          mine.push(afterSp);
        }
        await sleep(randomInt(51)); // the event ids are taken; commit comes 0-50 ms later
        if (Math.random() < 0.12) {
          await conn`rollback`;
          for (const id of [...mine, ...undone]) rolledBack.add(id);
          stats.rollbacks++;
        } else {
          await conn`commit`;
          for (const id of mine) committed.add(id);
          for (const id of undone) rolledBack.add(id);
          stats.commits++;
        }
      }
    } finally {
      conn.release();
    }
  };
  await Promise.all(Array.from({ length: WRITERS }, (_, w) => writer(w)));

  // Before the long transaction commits, everybody else's events were delivered: nothing
  // waited for it.
  const deliveredIds = () => new Set([...seen.values()].map((s) => s[0]!.rowId));
  const missingNow = () => [...committed].filter((id) => !deliveredIds().has(id));
  await waitFor(async () => missingNow().length === 0, "the writers' committed events while the long transaction is still open", 20_000).catch(
    (error: Error) => {
      throw new Error(`${error.message}: ${missingNow().length} of ${committed.size} committed events never delivered (e.g. rows ${missingNow().slice(0, 10).join(", ")})`);
    },
  );
  assert.equal([...deliveredIds()].filter((id) => longIds.includes(id)).length, 0, "the open transaction's events are not visible yet");

  await longConn`commit`;
  longConn.release();
  for (const id of longIds) committed.add(id);

  await waitFor(async () => missingNow().length === 0, "every committed event, the late transaction's too", 20_000).catch((error: Error) => {
    throw new Error(`${error.message}: ${missingNow().length} of ${committed.size} committed events never delivered (e.g. rows ${missingNow().slice(0, 10).join(", ")})`);
  });
  await waitFor(
    async () => {
      const [row] = await db.sql<{ open: number }[]>`
        select count(*)::int as open from outbox.deliveries where subscription = 'no_skip' and status <> 'delivered'`;
      return row!.open === 0;
    },
    "every delivery recorded as delivered",
    10_000,
  );
  // Stopping drains: any duplicate still in flight would be counted below.
  await worker.stop();

  // Ground truth: the rows that exist are exactly the committed ones.
  const rows = await db.sql<{ id: string }[]>`select id::text from stress`;
  const inTable = new Set(rows.map((r) => Number(r.id)));
  assert.deepEqual([...inTable].sort((a, b) => a - b), [...committed].sort((a, b) => a - b), "the writers' bookkeeping matches the table");

  const deliveredRows = [...seen.values()].map((s) => s[0]!.rowId);
  const duplicates = [...seen.entries()].filter(([, s]) => s.length > 1).map(([id, s]) => `${id} (row ${s[0]!.rowId}) x${s.length}`);
  const missing = [...committed].filter((id) => !deliveredIds().has(id));
  const ghosts = deliveredRows.filter((id) => !committed.has(id));
  const rowsTwice = deliveredRows.length - new Set(deliveredRows).size;
  t.diagnostic(
    `commits ${stats.commits}, rollbacks ${stats.rollbacks}, savepoints rolled back ${stats.savepointRollbacks}; ` +
      `committed events ${committed.size}, delivered ${seen.size}, duplicates ${duplicates.length}, missing ${missing.length}, rolled-back delivered ${ghosts.length}`,
  );
  assert.ok(committed.size > 1000, `a real stress run (${committed.size} committed events)`);
  assert.ok(rolledBack.size > 50 && stats.savepointRollbacks > 5, "rollbacks and savepoint rollbacks happened");
  assert.deepEqual(missing, [], "no committed event is missing");
  assert.deepEqual(duplicates, [], "no event is delivered twice");
  assert.equal(rowsTwice, 0, "no row has two events");
  assert.deepEqual(ghosts, [], "no rolled-back event is delivered");
  assert.equal(seen.size, committed.size);

  const [summary] = await db.sql<{ deliveries: number; delivered: number; retried: number }[]>`
    select count(*)::int as deliveries,
           count(*) filter (where status = 'delivered')::int as delivered,
           count(*) filter (where attempts <> 1)::int as retried
    from outbox.deliveries where subscription = 'no_skip'`;
  assert.deepEqual(summary, { deliveries: committed.size, delivered: committed.size, retried: 0 }, "one delivery row per event, each delivered at its first attempt");
  await outbox.close();
});

test("an open transaction holding an uncommitted event does not delay anybody else's: commit to handler < 1 s", async (t) => {
  await db.sql`create table lag (id bigint primary key)`;
  await db.sql`select outbox.enable_capture('lag', operations => '{insert}')`;

  const outbox = createOutbox({ connectionString: db.url, worker: { pollIntervalMs: 200, leaseMs: 2000 } });
  outboxes.push(outbox);
  const arrived = new Map<number, number>();
  outbox.handle("lag_watch", "public.lag.insert", (event) => {
    const id = Number((event.key as { id: number }).id);
    if (!arrived.has(id)) arrived.set(id, Date.now());
  });
  const worker = await outbox.start();
  workers.push(worker);

  // Warm up: the worker is running and delivering.
  await db.sql`insert into lag (id) values (1)`;
  await waitFor(async () => arrived.has(1), "the warm-up event", 10_000);

  // A transaction takes an event id (and an xid) and stays open throughout.
  const blocker = await client().reserve();
  await blocker`begin`;
  await blocker`insert into lag (id) values (2)`;

  const writerConn = client();
  const latencies: number[] = [];
  for (let i = 0; i < 25; i++) {
    const id = 100 + i;
    await writerConn`insert into lag (id) values (${id})`; // autocommit: resolves after COMMIT
    const committedAt = Date.now();
    const at = await waitFor(async () => arrived.get(id), `event ${id} while another transaction stays open`, 5_000);
    latencies.push(at - committedAt);
    // Spread the writes out: some arrive while the worker is idle, some while it is busy.
    if (i % 5 === 4) await sleep(randomInt(300));
  }
  assert.equal(arrived.has(2), false, "the open transaction's event is not delivered before it commits");

  await blocker`commit`;
  const blockerCommittedAt = Date.now();
  blocker.release();
  const lateAt = await waitFor(async () => arrived.get(2), "the long transaction's event once it commits", 5_000);
  const sorted = [...latencies].sort((a, b) => a - b);
  t.diagnostic(
    `commit -> handler while a transaction stays open: p50 ${sorted[Math.floor(sorted.length / 2)]} ms, max ${sorted.at(-1)} ms; ` +
      `late transaction's event ${lateAt - blockerCommittedAt} ms after its commit`,
  );
  assert.ok(sorted.at(-1)! < 1000, `every event reached the handler within 1 s of its commit (max ${sorted.at(-1)} ms)`);
  assert.ok(lateAt - blockerCommittedAt < 1000, `the late transaction's event within 1 s of its commit (${lateAt - blockerCommittedAt} ms)`);

  await worker.stop();
  await outbox.close();
});
