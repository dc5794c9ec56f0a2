/**
 * Schema changes of captured tables: writes keep working through add, rename and drop of
 * columns without calling enable_capture again, options follow renamed columns, dropped
 * tables leave outbox.captures, and capture that is bypassed (trigger missing or disabled,
 * session_replication_role = replica) shows in outbox.captures.health.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { capturedEvents } from "./capturedEvents.js";
import { useTestDatabase } from "./harness.js";

const db = useTestDatabase();

const eventsOf = (schema: string) => capturedEvents(db.sql, schema);

async function capture(schema: string, table = "t") {
  const [row] = await db.sql<
    { columns: string[] | null; exclude_columns: string[] | null; key_columns: string[] | null; health: string; bypassed_statements: number }[]
  >`select columns, exclude_columns, key_columns, health, bypassed_statements::int as bypassed_statements
    from outbox.captures where schema_name = ${schema} and table_name = ${table}`;
  return row;
}

test("add, alter and drop columns: writes keep working, a new column appears in new", async () => {
  await db.sql.unsafe(`
    create schema sc_add;
    create table sc_add.t (id int primary key, email text, legacy text, qty int);
    select outbox.enable_capture('sc_add.t');
    insert into sc_add.t values (1, 'a@x', 'old', 1);
    alter table sc_add.t add column nick text default 'anon';
    insert into sc_add.t (id, email, nick) values (2, 'b@x', 'bee');
    alter table sc_add.t drop column legacy;
    alter table sc_add.t alter column qty type bigint;
    update sc_add.t set qty = 5000000000 where id = 1;
    insert into sc_add.t (id) values (3);
    delete from sc_add.t where id = 2;`);
  const events = await eventsOf("sc_add");
  assert.deepEqual(
    events.map((e) => [e.op, e.key]),
    [
      ["insert", { id: 1 }],
      ["insert", { id: 2 }],
      ["update", { id: 1 }],
      ["insert", { id: 3 }],
      ["delete", { id: 2 }],
    ],
  );
  assert.deepEqual(events[0]!.payload.new, { id: 1, email: "a@x", legacy: "old", qty: 1 });
  assert.deepEqual(events[1]!.payload.new, { id: 2, email: "b@x", legacy: null, qty: null, nick: "bee" }, "the new column is in new");
  assert.deepEqual(events[2]!.payload.old, { id: 1, email: "a@x", qty: 1, nick: "anon" }, "the dropped column is gone");
  assert.deepEqual(events[2]!.payload.new, { id: 1, email: "a@x", qty: 5000000000, nick: "anon" });
  assert.deepEqual(events[2]!.payload.changed, ["qty"]);
  assert.equal((await capture("sc_add"))!.health, "ok");
});

test("a column added to a capture with `columns` is carried in new but not watched", async () => {
  await db.sql.unsafe(`
    create schema sc_watch;
    create table sc_watch.t (id int primary key, email text);
    select outbox.enable_capture('sc_watch.t', columns => '{email}');
    insert into sc_watch.t values (1, 'a@x');
    alter table sc_watch.t add column nick text;
    update sc_watch.t set nick = 'n';
    update sc_watch.t set email = 'b@x';`);
  const events = await eventsOf("sc_watch");
  assert.deepEqual(
    events.map((e) => e.op),
    ["insert", "update"],
    "changing only the new column makes no event",
  );
  assert.deepEqual(events[1]!.payload.new, { id: 1, email: "b@x", nick: "n" });
  assert.deepEqual((await capture("sc_watch"))!.columns, ["email"]);
});

test("a renamed excluded column stays excluded under its new name", async () => {
  await db.sql.unsafe(`
    create schema sc_excl;
    create table sc_excl.t (id int primary key, email text, password text);
    select outbox.enable_capture('sc_excl.t', exclude_columns => '{password}');
    alter table sc_excl.t rename column password to pw;
    insert into sc_excl.t values (1, 'a@x', 'secret');
    update sc_excl.t set pw = 'secret2';
    update sc_excl.t set email = 'b@x', pw = 'secret3';
    delete from sc_excl.t;`);
  const events = await eventsOf("sc_excl");
  assert.deepEqual(
    events.map((e) => e.op),
    ["insert", "update", "delete"],
    "changing only the excluded column makes no event",
  );
  for (const e of events) {
    for (const image of [e.payload.new, e.payload.old]) {
      if (!image) continue;
      assert.ok(!("pw" in image) && !("password" in image), `${e.op}: neither name appears`);
    }
  }
  assert.deepEqual(events[1]!.payload.changed, ["email"]);
  assert.ok(!JSON.stringify(events).includes("secret"), "the value appears nowhere");
  assert.deepEqual((await capture("sc_excl"))!.exclude_columns, ["pw"]);
});

test("renaming a primary-key column, or changing the primary key, keeps `key` right", async () => {
  await db.sql.unsafe(`
    create schema sc_key;
    create table sc_key.t (id int primary key, code text not null, v text);
    select outbox.enable_capture('sc_key.t');
    insert into sc_key.t values (1, 'c1', 'a');
    alter table sc_key.t rename column id to user_id;
    insert into sc_key.t values (2, 'c2', 'b');
    update sc_key.t set v = 'bb' where user_id = 2;
    alter table sc_key.t drop constraint t_pkey, add primary key (code);
    insert into sc_key.t values (3, 'c3', 'c');
    delete from sc_key.t where user_id = 3;`);
  const events = await eventsOf("sc_key");
  assert.deepEqual(
    events.map((e) => [e.op, e.key, e.payload.new ? Object.keys(e.payload.new).sort() : null]),
    [
      ["insert", { id: 1 }, ["code", "id", "v"]],
      ["insert", { user_id: 2 }, ["code", "user_id", "v"]],
      ["update", { user_id: 2 }, ["code", "user_id", "v"]],
      ["insert", { code: "c3" }, ["code", "user_id", "v"]],
      ["delete", { code: "c3" }, null],
    ],
  );
  assert.deepEqual((await capture("sc_key"))!.key_columns, ["code"]);
});

test("renaming a captured table or its schema: events carry the new names", async () => {
  await db.sql.unsafe(`
    create schema sc_rename;
    create table sc_rename.t (id int primary key);
    select outbox.enable_capture('sc_rename.t');
    alter table sc_rename.t rename to accounts;
    insert into sc_rename.accounts values (1);
    alter schema sc_rename rename to sc_renamed;
    insert into sc_renamed.accounts values (2);`);
  const rows = await db.sql<{ topic: string }[]>`
    select topic from outbox.events where schema_name in ('sc_rename', 'sc_renamed') order by position`;
  assert.deepEqual(
    rows.map((r) => r.topic),
    ["sc_rename.accounts.insert", "sc_renamed.accounts.insert"],
  );
  assert.equal((await capture("sc_renamed", "accounts"))!.health, "ok");
});

test("dropping a captured table, or its schema, removes its row from outbox.captures; events stay", async () => {
  await db.sql.unsafe(`
    create schema sc_drop;
    create table sc_drop.a (id int primary key);
    create table sc_drop.b (id int primary key);
    create table sc_drop.c (id int primary key);
    select outbox.enable_capture('sc_drop.a');
    select outbox.enable_capture('sc_drop.b');
    select outbox.enable_capture('sc_drop.c');
    insert into sc_drop.a values (1);`);
  const captured = async () =>
    (await db.sql<{ target: string }[]>`select target::text from outbox.captures where schema_name = 'sc_drop' order by 1`).map((r) => r.target);
  assert.deepEqual(await captured(), ["sc_drop.a", "sc_drop.b", "sc_drop.c"]);
  await db.sql.unsafe(`drop table sc_drop.a`);
  assert.deepEqual(await captured(), ["sc_drop.b", "sc_drop.c"]);
  await db.sql.unsafe(`drop schema sc_drop cascade`);
  const [{ left }] = await db.sql<{ left: number }[]>`
    select count(*)::int as left from outbox._captures c
    where not exists (select from pg_class where oid = c.target)`;
  assert.equal(left, 0, "no row of outbox._captures points at a dropped table");
  assert.equal((await eventsOf("sc_drop")).length, 1, "the events already written stay");
});

test("health reports a capture trigger dropped or disabled by hand; enable_capture repairs it", async () => {
  await db.sql.unsafe(`
    create schema sc_health;
    create table sc_health.t (id int primary key, v text);
    select outbox.enable_capture('sc_health.t');`);
  assert.equal((await capture("sc_health"))!.health, "ok");

  await db.sql.unsafe(`drop trigger outbox_capture_update on sc_health.t`);
  assert.equal((await capture("sc_health"))!.health, "trigger outbox_capture_update is missing");
  await db.sql`select outbox.enable_capture('sc_health.t')`;
  assert.equal((await capture("sc_health"))!.health, "ok");

  await db.sql.unsafe(`alter table sc_health.t disable trigger outbox_capture_insert`);
  assert.equal((await capture("sc_health"))!.health, "trigger outbox_capture_insert is disabled");
  await db.sql.unsafe(`alter table sc_health.t add column w text`);
  assert.equal((await capture("sc_health"))!.health, "trigger outbox_capture_insert is disabled", "another ALTER TABLE keeps the trigger as the user left it");
  await db.sql.unsafe(`insert into sc_health.t values (1)`);
  assert.equal((await eventsOf("sc_health")).length, 0, "the disabled trigger did not capture");
  await db.sql`select outbox.enable_capture('sc_health.t')`;
  assert.equal((await capture("sc_health"))!.health, "ok");
  await db.sql.unsafe(`insert into sc_health.t values (2)`);
  assert.deepEqual(
    (await eventsOf("sc_health")).map((e) => e.key),
    [{ id: 2 }],
  );
});

test("writes under session_replication_role = replica show up as bypassed", async () => {
  await db.sql.unsafe(`
    create schema sc_replica;
    create table sc_replica.t (id int primary key, v text);
    select outbox.enable_capture('sc_replica.t');
    insert into sc_replica.t values (1, 'a');`);
  assert.equal((await capture("sc_replica"))!.health, "ok");
  await db.sql.begin(async (tx) => {
    await tx`set local session_replication_role = replica`;
    await tx`insert into sc_replica.t values (2, 'b')`;
    await tx`update sc_replica.t set v = 'c'`;
  });
  await db.sql`insert into sc_replica.t values (3, 'd')`;
  const events = await eventsOf("sc_replica");
  assert.deepEqual(
    events.map((e) => [e.op, e.key]),
    [
      ["insert", { id: 1 }],
      ["insert", { id: 3 }],
    ],
    "capture triggers do not fire under replica",
  );
  const row = (await capture("sc_replica"))!;
  assert.notEqual(row.health, "ok");
  assert.match(row.health, /bypassed capture under session_replication_role = replica/);
  assert.equal(row.bypassed_statements, 2, "one per statement");
});
