/**
 * Quoted and odd identifiers through capture: enable_capture, the trigger arguments it writes
 * (key, excluded, watched columns) and the events must all survive names with spaces,
 * capitals, quotes, unicode, reserved words and the 63-byte limit.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { capturedEvents } from "./capturedEvents.js";
import { useTestDatabase } from "./harness.js";

const db = useTestDatabase();

const eventsOf = (schema: string, table: string) => capturedEvents(db.sql, schema, table);

/** A quoted identifier. */
const q = (name: string) => `"${name.replaceAll('"', '""')}"`;

test('a table named "select" in schema "Order Items" is captured under its real names', async () => {
  await db.sql.unsafe(`
    create schema "Order Items";
    create table "Order Items"."select" ("Id" int primary key, "from" text, "Total" numeric);
    select outbox.enable_capture('"Order Items"."select"');
    insert into "Order Items"."select" values (1, 'shop', 10);
    update "Order Items"."select" set "Total" = 11;
    delete from "Order Items"."select";`);
  const events = await eventsOf("Order Items", "select");
  assert.deepEqual(
    events.map((e) => e.topic),
    ["Order Items.select.insert", "Order Items.select.update", "Order Items.select.delete"],
  );
  for (const e of events) {
    assert.equal(e.payload.type, e.topic);
    assert.deepEqual(e.payload.table, { schema: "Order Items", name: "select" });
    assert.deepEqual(e.key, { Id: 1 });
    assert.deepEqual(e.payload.key, { Id: 1 });
  }
  assert.deepEqual(events[0]!.payload.new, { Id: 1, from: "shop", Total: 10 });
  assert.deepEqual(events[1]!.payload.changed, ["Total"]);
  const [capture] = await db.sql`select schema_name, table_name, key_columns, health from outbox.captures where table_name = 'select'`;
  assert.deepEqual(capture, { schema_name: "Order Items", table_name: "select", key_columns: ["Id"], health: "ok" });
});

test("unicode schema, table and column names", async () => {
  await db.sql.unsafe(`
    create schema "Bücher ☃";
    create table "Bücher ☃"."Ausleihe Ü" ("Nummer №" int primary key, "straße" text, "日本語" text, "emoji 🎉" text);
    select outbox.enable_capture('"Bücher ☃"."Ausleihe Ü"', exclude_columns => '{日本語}', columns => '{straße}');
    insert into "Bücher ☃"."Ausleihe Ü" values (1, 'Hauptstraße', 'secret', '🎈');
    update "Bücher ☃"."Ausleihe Ü" set "emoji 🎉" = '🎊';
    update "Bücher ☃"."Ausleihe Ü" set "straße" = 'Nebenstraße';`);
  const events = await eventsOf("Bücher ☃", "Ausleihe Ü");
  assert.deepEqual(
    events.map((e) => e.topic),
    ["Bücher ☃.Ausleihe Ü.insert", "Bücher ☃.Ausleihe Ü.update"],
    "an update of an unwatched column makes no event",
  );
  assert.deepEqual(events[0]!.key, { "Nummer №": 1 });
  assert.deepEqual(events[0]!.payload.new, { "Nummer №": 1, straße: "Hauptstraße", "emoji 🎉": "🎈" }, "日本語 is excluded");
  assert.deepEqual(events[1]!.payload.changed, ["straße"]);
  assert.ok(!("日本語" in events[1]!.payload.old!));
});

test("names at the 63-byte limit", async () => {
  // 63 bytes each; the unicode one has 2-byte characters so truncation could split one.
  const schema = `s${"x".repeat(62)}`;
  const table = `${"ä".repeat(31)}t`;
  const keyColumn = `K${"k".repeat(62)}`;
  const otherColumn = `${"ö".repeat(31)}c`;
  for (const name of [schema, table, keyColumn, otherColumn]) assert.equal(Buffer.byteLength(name), 63);
  await db.sql.unsafe(`
    create schema ${q(schema)};
    create table ${q(schema)}.${q(table)} (${q(keyColumn)} int primary key, ${q(otherColumn)} text, plain text);
    select outbox.enable_capture('${q(schema)}.${q(table)}', columns => array['${otherColumn}']);
    insert into ${q(schema)}.${q(table)} values (1, 'a', 'p');
    update ${q(schema)}.${q(table)} set ${q(otherColumn)} = 'b';`);
  const events = await eventsOf(schema, table);
  assert.deepEqual(
    events.map((e) => e.topic),
    [`${schema}.${table}.insert`, `${schema}.${table}.update`],
  );
  assert.deepEqual(events[0]!.key, { [keyColumn]: 1 });
  assert.deepEqual(events[0]!.payload.new, { [keyColumn]: 1, [otherColumn]: "a", plain: "p" });
  assert.deepEqual(events[1]!.payload.changed, [otherColumn]);
  const [capture] = await db.sql`select columns, key_columns, health from outbox.captures where table_name = ${table}`;
  assert.deepEqual(capture, { columns: [otherColumn], key_columns: [keyColumn], health: "ok" });
});

test("the same table name in two schemas: each event carries its own schema, table and topic", async () => {
  await db.sql.unsafe(`
    create schema ident_north;
    create schema ident_south;
    create table ident_north.orders (id int primary key, v text);
    create table ident_south.orders (id int primary key, v text, extra int);
    select outbox.enable_capture('ident_north.orders');
    select outbox.enable_capture('ident_south.orders', operations => '{insert}');
    insert into ident_north.orders values (1, 'n');
    insert into ident_south.orders values (1, 's', 7);
    update ident_north.orders set v = 'n2';
    update ident_south.orders set v = 's2';`);
  const rows = await db.sql<{ topic: string; schema_name: string; table_name: string; v: string }[]>`
    select topic, schema_name, table_name, payload->'new'->>'v' as v from outbox.events
    where table_name = 'orders' and schema_name like 'ident\\_%' order by position`;
  assert.deepEqual([...rows], [
    { topic: "ident_north.orders.insert", schema_name: "ident_north", table_name: "orders", v: "n" },
    { topic: "ident_south.orders.insert", schema_name: "ident_south", table_name: "orders", v: "s" },
    { topic: "ident_north.orders.update", schema_name: "ident_north", table_name: "orders", v: "n2" },
  ]);
  const captures = await db.sql`select schema_name, operations from outbox.captures where table_name = 'orders' order by schema_name`;
  assert.deepEqual([...captures], [
    { schema_name: "ident_north", operations: ["delete", "insert", "update"] },
    { schema_name: "ident_south", operations: ["insert"] },
  ]);
});

test("a composite primary key: the key object has both columns, also when the key changes", async () => {
  await db.sql.unsafe(`
    create schema ident_composite;
    create table ident_composite.lines ("Order Id" int, line_no int, qty int, primary key ("Order Id", line_no));
    select outbox.enable_capture('ident_composite.lines');
    insert into ident_composite.lines values (10, 1, 5), (10, 2, 6);
    update ident_composite.lines set line_no = line_no + 10 where line_no = 1;
    delete from ident_composite.lines where line_no = 2;`);
  const events = await eventsOf("ident_composite", "lines");
  assert.deepEqual(
    events.map((e) => [e.op, e.key]),
    [
      ["insert", { "Order Id": 10, line_no: 1 }],
      ["insert", { "Order Id": 10, line_no: 2 }],
      ["update", { "Order Id": 10, line_no: 11 }],
      ["delete", { "Order Id": 10, line_no: 2 }],
    ],
  );
  assert.deepEqual(events[2]!.payload.old, { "Order Id": 10, line_no: 1, qty: 5 });
  assert.deepEqual(events[2]!.payload.changed, ["line_no"]);
  const [capture] = await db.sql`select key_columns from outbox.captures where table_name = 'lines'`;
  assert.deepEqual(capture!.key_columns, ["Order Id", "line_no"]);
});

test("column names with spaces, quotes, commas and braces, in key, exclude_columns and columns", async () => {
  // Such names travel through trigger arguments as text[] literals: quoting must hold.
  const key = 'id "quoted", {braced}';
  const secret = "pass word\\";
  const watched = "it's \"watched\"";
  await db.sql.unsafe(`
    create schema ident_cols;
    create table ident_cols.t (${q(key)} text primary key, ${q(secret)} text, ${q(watched)} int, "  " text, "NULL" text);
    select outbox.enable_capture('ident_cols.t', exclude_columns => array[$$${secret}$$], columns => array[$$${watched}$$, '  ']);`);
  const [capture] = await db.sql`select exclude_columns, columns, key_columns, health from outbox.captures where table_name = 't' and schema_name = 'ident_cols'`;
  assert.deepEqual(capture, { exclude_columns: [secret], columns: [watched, "  "], key_columns: [key], health: "ok" });
  await db.sql.unsafe(`
    insert into ident_cols.t values ('k,1', 's', 1, 'blank', 'null-named');
    update ident_cols.t set "NULL" = 'not watched';
    update ident_cols.t set ${q(watched)} = 2, "NULL" = 'x';
    update ident_cols.t set "  " = 'still blank';`);
  const events = await eventsOf("ident_cols", "t");
  assert.deepEqual(
    events.map((e) => e.op),
    ["insert", "update", "update"],
  );
  assert.deepEqual(events[0]!.key, { [key]: "k,1" });
  assert.deepEqual(events[0]!.payload.new, { [key]: "k,1", [watched]: 1, "  ": "blank", NULL: "null-named" });
  assert.deepEqual([...events[1]!.payload.changed!].sort(), ["NULL", watched].sort());
  assert.deepEqual(events[2]!.payload.changed, ["  "]);
  for (const e of events) {
    assert.ok(!(secret in (e.payload.new ?? {})) && !(secret in (e.payload.old ?? {})), "the excluded column never appears");
  }
});

test("columns named like the trigger's own aliases and variables (n, o, r, pos, v_exclude) are captured as columns", async () => {
  // The statement trigger reads transition tables aliased n and o: a bare `n` would mean
  // the column n and the event would carry one value instead of the row.
  await db.sql.unsafe(`
    create schema ident_alias;
    create table ident_alias.t (id int primary key, n int, o int, r int, pos int, image text, chunk int, v_exclude text, v_keys text, tg_op text, "new" text, "old" text);
    create table ident_alias.t2 (like ident_alias.t including all);
    select outbox.enable_capture('ident_alias.t');
    select outbox.enable_capture('ident_alias.t2', exclude_columns => '{image}');`);
  for (const table of ["t", "t2"]) {
    await db.sql.unsafe(`
      insert into ident_alias.${table} values (1, 10, 20, 30, 40, 'img', 50, 'vx', 'vk', 'op', 'nw', 'od');
      update ident_alias.${table} set n = 11, o = 21;
      update ident_alias.${table} set v_exclude = 'vy';
      delete from ident_alias.${table};`);
    const events = await eventsOf("ident_alias", table);
    const full = { id: 1, n: 10, o: 20, r: 30, pos: 40, image: "img", chunk: 50, v_exclude: "vx", v_keys: "vk", tg_op: "op", new: "nw", old: "od" };
    if (table === "t2") delete (full as Partial<typeof full>).image;
    assert.deepEqual(
      events.map((e) => e.op),
      ["insert", "update", "update", "delete"],
      table,
    );
    assert.deepEqual(events[0]!.payload.new, full, `${table}: the insert image is the whole row`);
    assert.deepEqual(events[1]!.payload.old, full);
    assert.deepEqual(events[1]!.payload.new, { ...full, n: 11, o: 21 });
    assert.deepEqual(events[1]!.payload.changed, ["n", "o"]);
    assert.deepEqual(events[2]!.payload.changed, ["v_exclude"]);
    assert.deepEqual(events[3]!.payload.old, { ...full, n: 11, o: 21, v_exclude: "vy" });
    assert.deepEqual(events[3]!.key, { id: 1 });
  }
});
