/**
 * DESIGN.md guarantee 8, second half: the dispatcher's state survives a dump and restore into
 * another cluster, where transaction ids restart. The stored xids (on events, and in the saved
 * snapshot) then lie "in the future" of the new cluster: a reader that trusted them would
 * re-read old events on every round forever, or skip new ones.
 *
 * A real pg_dump of a test database is restored into a freshly initialised embedded
 * PostgreSQL, whose transaction counter starts near zero.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { promisify } from "node:util";
import postgres, { type Sql } from "postgres";
import { startEmbeddedPostgres, type EmbeddedServer } from "../src/db/embeddedPostgres.js";
import { capturedTable, dispatchOnce } from "./deliveryHelpers.js";
import { databaseUrlFor, useTestDatabase } from "./harness.js";

const run = promisify(execFile);
const cleanups: Array<() => Promise<unknown>> = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
});

const db = useTestDatabase();

async function xidNow(sql: Sql): Promise<bigint> {
  const [row] = await sql<{ xid: string }[]>`select pg_current_xact_id()::text as xid`;
  return BigInt(row!.xid);
}

/** Deliveries per event of the test's table, keyed by the captured row's id. */
async function deliveriesPerRow(sql: Sql): Promise<Record<number, number>> {
  const rows = await sql<{ id: number; n: number }[]>`
    select (e.key ->> 'id')::int as id, count(d.id)::int as n
    from outbox.events e left join outbox.deliveries d on d.event_id = e.id and d.subscription = 'restore_sub'
    where e.table_name = 'r_events' group by 1 order by 1`;
  return Object.fromEntries(rows.map((r) => [r.id, r.n]));
}

/** Runs dispatch rounds until one reads nothing; returns the events each round read. */
async function dispatchUntilIdle(sql: Sql): Promise<number[]> {
  const rounds: number[] = [];
  for (let i = 0; i < 10; i++) {
    const { events } = await dispatchOnce(sql);
    rounds.push(events);
    if (events === 0) return rounds;
  }
  return rounds;
}

test("a dump restored into a new cluster (transaction ids restart): nothing lost, nothing dispatched twice, no event read again round after round", async (t) => {
  const source = db.sql;
  await capturedTable(source, "r_events");
  await source`insert into outbox.subscriptions (name, pattern, kind) values ('restore_sub', 'public.r_events.insert', 'handler')`;
  // Run the source's transaction counter well ahead of where a fresh cluster starts (each
  // exception block that takes an xid is a subtransaction with an xid of its own).
  await source.unsafe(`do $$ begin for i in 1..30000 loop begin perform pg_current_xact_id(); exception when others then null; end; end loop; end $$`);

  await source`insert into r_events (id) values (1), (2), (3)`;
  // A transaction left open while dispatch reads: its xid goes into the saved snapshot.
  const open = await source.reserve();
  cleanups.push(async () => open.release());
  await open`begin`;
  await open`insert into r_events (id) values (100)`;
  assert.deepEqual(await dispatchUntilIdle(source), [3, 0]);
  await source`insert into r_events (id) values (4), (5)`; // committed, not yet dispatched
  const [saved] = await source<{ xmax: string }[]>`select snapshot_xmax::text as xmax from outbox._dispatch_state`;

  const dir = await mkdtemp(join(tmpdir(), "outbox-restore-"));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const dump = join(dir, "dump.sql");
  // --no-toast-compression: the embedded build has no lz4 (pg-outbox then keeps pglz).
  await run("pg_dump", ["--no-owner", "--no-toast-compression", "--file", dump, db.url]);
  await open`rollback`; // never committed: must never be delivered anywhere

  const server: EmbeddedServer = await startEmbeddedPostgres();
  cleanups.push(() => server.stop());
  const admin = postgres(server.url, { max: 1, onnotice: () => undefined });
  await admin`create database restored`;
  await admin.end();
  const restoredUrl = databaseUrlFor(server.url, "restored");
  const { password } = new URL(restoredUrl);
  await run("psql", ["--quiet", "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "--file", dump, restoredUrl], {
    env: { ...process.env, PGPASSWORD: password },
  });
  const target = postgres(restoredUrl, { max: 2, onnotice: () => undefined });
  cleanups.push(() => target.end({ timeout: 5 }));

  const targetXid = await xidNow(target);
  t.diagnostic(`saved snapshot xmax ${saved!.xmax}; the new cluster's next xid ${targetXid}`);
  assert.ok(targetXid < BigInt(saved!.xmax), "precondition: the new cluster's transaction ids are behind the saved ones");

  await target`insert into r_events (id) values (6), (7)`; // written after the restore
  const rounds = await dispatchUntilIdle(target);
  t.diagnostic(`events read by successive rounds after the restore: ${rounds.join(", ")}`);
  assert.deepEqual(await deliveriesPerRow(target), { 1: 1, 2: 1, 3: 1, 4: 1, 5: 1, 6: 1, 7: 1 }, "every committed event has exactly one delivery");

  // Later rounds read only what is new: restored events are not read again and again.
  assert.deepEqual(await dispatchUntilIdle(target), [0], "an idle round reads nothing");
  await target`insert into r_events (id) values (8)`;
  assert.deepEqual(await dispatchUntilIdle(target), [1, 0], "the next round reads only the new event");
  assert.deepEqual(await deliveriesPerRow(target), { 1: 1, 2: 1, 3: 1, 4: 1, 5: 1, 6: 1, 7: 1, 8: 1 });
});
