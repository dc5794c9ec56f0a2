/**
 * `outbox.emit(client, …)` joins the caller's transaction on every client an app may hold:
 * postgres.js, drizzle on postgres.js, drizzle on node-postgres, and node-postgres itself. The
 * event commits with the transaction and disappears with its rollback.
 */
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { sql as drizzleSql } from "drizzle-orm";
import { drizzle as drizzleNodePg } from "drizzle-orm/node-postgres";
import { drizzle as drizzlePostgresJs } from "drizzle-orm/postgres-js";
import pg from "pg";
import { createOutbox, type Outbox } from "../src/outbox.js";
import { OutboxError } from "../src/errors.js";
import { useTestDatabase } from "./harness.js";

const db = useTestDatabase();
let outbox: Outbox;
let pool: pg.Pool;
/** Opened in the first test: db.url is set by useTestDatabase's hook. */
function open(): void {
  outbox ??= createOutbox({ connectionString: db.url });
  pool ??= new pg.Pool({ connectionString: db.url, max: 2 });
}
after(async () => {
  await outbox?.close();
  await pool?.end();
});

async function topicsLike(prefix: string): Promise<string[]> {
  const rows = await db.sql<{ topic: string }[]>`select topic from outbox.events where topic like ${prefix + ".%"} order by position`;
  return rows.map((r) => r.topic);
}

/** Emits `<prefix>.kept` in a transaction that commits and `<prefix>.dropped` in one that rolls back. */
async function commitAndRollBack(prefix: string, inTransaction: (work: (tx: Parameters<Outbox["emit"]>[0]) => Promise<void>) => Promise<void>) {
  open();
  let id = "";
  await inTransaction(async (tx) => {
    id = await outbox.emit(tx, `${prefix}.kept`, { n: 1 }, { key: "k1" });
  });
  await assert.rejects(
    inTransaction(async (tx) => {
      await outbox.emit(tx, `${prefix}.dropped`, { n: 2 });
      throw new Error("roll back");
    }),
    /roll back/,
  );
  assert.deepEqual(await topicsLike(prefix), [`${prefix}.kept`], "the committed event is there, the rolled-back one is not");
  const [row] = await db.sql<{ id: string; key: string; data: unknown }[]>`
    select id, key #>> '{}' as key, payload -> 'data' as data from outbox.events where topic = ${prefix + ".kept"}`;
  assert.deepEqual(row, { id, key: "k1", data: { n: 1 } }, "emit returned the event's id, and the key and data arrived");
}

test("emit joins a postgres.js transaction", async () => {
  await commitAndRollBack("pgjs", (work) => db.sql.begin((tx) => work(tx)).then(() => undefined));
});

test("emit joins a drizzle transaction on postgres.js", async () => {
  const d = drizzlePostgresJs(db.sql);
  await commitAndRollBack("drizzlejs", (work) => d.transaction((tx) => work(tx)));
});

test("emit joins a drizzle transaction on node-postgres", async () => {
  open();
  const d = drizzleNodePg(pool);
  await commitAndRollBack("drizzlenode", (work) => d.transaction((tx) => work(tx)));
  // And a drizzle database outside a transaction writes a standalone event.
  await outbox.emit(d, "drizzlenodedb.standalone", { ok: true });
  assert.deepEqual(await topicsLike("drizzlenodedb"), ["drizzlenodedb.standalone"]);
  assert.ok((await d.execute(drizzleSql`select 1 as one`)).rows.length === 1);
});

test("emit joins a node-postgres transaction", async () => {
  open();
  await commitAndRollBack("nodepg", async (work) => {
    const client = await pool.connect();
    try {
      await client.query("begin");
      await work(client);
      await client.query("commit");
    } catch (error) {
      await client.query("rollback");
      throw error;
    } finally {
      client.release();
    }
  });
});

test("emit refuses something that is not a database client, saying which clients it takes, and a bad topic keeps PostgreSQL's reason", async () => {
  open();
  await assert.rejects(
    outbox.emit({} as never, "x.y", {}),
    (error: unknown) => error instanceof OutboxError && /neither a postgres\.js client, a drizzle database or transaction, nor a node-postgres client/.test(error.message),
  );
  await assert.rejects(outbox.emit(drizzleNodePg(pool), "", {}), OutboxError);
});

test("createOutbox shares a drizzle database on postgres.js (db), and refuses one on node-postgres with what to give instead", async () => {
  const shared = createOutbox({ db: drizzlePostgresJs(db.sql) });
  const id = await shared.emit(shared.sql, "shareddb.standalone", { n: 3 });
  assert.deepEqual(await topicsLike("shareddb"), ["shareddb.standalone"]);
  assert.ok(id.length === 36, "an event id");
  await shared.close(); // not ours to close: the test database's client still works
  assert.equal((await db.sql`select 1 as one`).length, 1);

  open();
  assert.throws(() => createOutbox({ db: drizzleNodePg(pool) }), /db must be a drizzle database on postgres\.js .*give connectionString/);
  assert.throws(() => createOutbox({ db: drizzlePostgresJs(db.sql), connectionString: db.url }), /^ConfigError: invalid createOutbox options: give exactly one of connectionString, sql or db$/);
});
