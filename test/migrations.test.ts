import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { test } from "node:test";
import postgres from "postgres";
import { migrate, migrationsFolder } from "../src/db/migrate.js";
import { renderSqlDirectory } from "../src/db/sqlSource.js";
import { useTestDatabase } from "./harness.js";

const db = useTestDatabase();

/** Definitions of every function, view and event trigger pg-outbox owns, by name. */
async function definitions(sql: postgres.Sql): Promise<Map<string, string>> {
  const rows = await sql<{ name: string; def: string }[]>`
    select p.oid::regprocedure::text as name, pg_get_functiondef(p.oid) as def
    from pg_proc p where p.pronamespace = 'outbox'::regnamespace
    union all
    select 'view ' || c.relname, pg_get_viewdef(c.oid)
    from pg_class c where c.relnamespace = 'outbox'::regnamespace and c.relkind = 'v'
    union all
    select 'event trigger ' || evtname, evtevent || ' ' || evtfoid::regproc::text || ' ' || array_to_string(evttags, ',')
    from pg_event_trigger where evtname like 'outbox%'`;
  return new Map(rows.map((r) => [r.name, r.def]));
}

test("the migrated database has exactly the functions, views and event triggers of sql/", async () => {
  const scratch = `${db.name}_sql`;
  await db.sql.unsafe(`create database ${scratch}`);
  const url = new URL(db.url);
  url.pathname = `/${scratch}`;
  const other = postgres(url.toString(), { max: 1, onnotice: () => undefined });
  try {
    // Expected: every table migration (drizzle-kit's DDL), then sql/ as it is now.
    for (const file of readdirSync(migrationsFolder).filter((f) => f.endsWith(".sql")).sort()) {
      const text = readFileSync(`${migrationsFolder}/${file}`, "utf8");
      if (!text.startsWith("-- pg-outbox: sql/")) await other.unsafe(text.replaceAll("--> statement-breakpoint", ""));
    }
    await other.unsafe(renderSqlDirectory("sql").replaceAll("--> statement-breakpoint", ""));
    const expected = await definitions(other);
    const actual = await definitions(db.sql);
    assert.deepEqual([...actual.keys()].sort(), [...expected.keys()].sort(), "same set of objects (run npm run db:sql-migration)");
    const differing = [...expected].filter(([name, def]) => actual.get(name) !== def).map(([name]) => name);
    assert.deepEqual(differing, [], "these differ from sql/ (run npm run db:sql-migration)");
  } finally {
    await other.end();
    await db.sql.unsafe(`drop database ${scratch} with (force)`);
  }
});

test("the newest SQL migration is sql/ as it is now", () => {
  const newest = readdirSync(migrationsFolder)
    .filter((f) => f.endsWith(".sql"))
    .sort()
    .map((f) => readFileSync(`${migrationsFolder}/${f}`, "utf8"))
    .filter((text) => text.startsWith("-- pg-outbox: sql/"))
    .at(-1);
  assert.ok(newest === renderSqlDirectory("sql"), "sql/ changed since the newest SQL migration: run npm run db:sql-migration");
});

test("migrate twice changes nothing, and concurrent migrations do not collide", async () => {
  const before = await definitions(db.sql);
  const [{ count: applied }] = await db.sql<{ count: number }[]>`select count(*)::int as count from outbox._migrations`;
  const clients = Array.from({ length: 4 }, () => postgres(db.url, { max: 2, onnotice: () => undefined }));
  try {
    await Promise.all(clients.map((c) => migrate(c)));
  } finally {
    await Promise.all(clients.map((c) => c.end()));
  }
  const [{ count: after }] = await db.sql<{ count: number }[]>`select count(*)::int as count from outbox._migrations`;
  assert.equal(after, applied);
  assert.deepEqual(await definitions(db.sql), before);
});

test("concurrent migrations of an empty database apply everything once", async () => {
  const name = `${db.name}_fresh`;
  await db.sql.unsafe(`create database ${name}`);
  const url = new URL(db.url);
  url.pathname = `/${name}`;
  const clients = Array.from({ length: 4 }, () => postgres(url.toString(), { max: 2, onnotice: () => undefined }));
  try {
    await Promise.all(clients.map((c) => migrate(c)));
    const journal = JSON.parse(readFileSync(`${migrationsFolder}/meta/_journal.json`, "utf8")) as { entries: unknown[] };
    const [{ count }] = await clients[0]!<{ count: number }[]>`select count(*)::int as count from outbox._migrations`;
    assert.equal(count, journal.entries.length);
  } finally {
    await Promise.all(clients.map((c) => c.end()));
    await db.sql.unsafe(`drop database ${name} with (force)`);
  }
});
