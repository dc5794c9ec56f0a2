/**
 * Column types through capture: what the trigger stores and outbox.events shows in
 * `payload->'new'` must be the row as written, exact (numeric precision, bigint beyond 2^53,
 * bytes, time zones), and types without `=` must never make the user's UPDATE fail.
 * Exactness is checked in SQL: JSON.parse in the client would round big numbers itself.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { useTestDatabase } from "./harness.js";

const db = useTestDatabase();

interface Payload {
  new: Record<string, unknown> | null;
  old: Record<string, unknown> | null;
  changed?: string[];
}

async function payloads(schema: string, table: string): Promise<{ op: string; payload: Payload }[]> {
  return db.sql<{ op: string; payload: Payload }[]>`
    select op, payload from outbox.events
    where schema_name = ${schema} and table_name = ${table} order by position`;
}

test("every common column type round-trips into payload->'new'", async () => {
  await db.sql.unsafe(`
    create schema types_all;
    create type types_all.mood as enum ('happy', 'sad', 'it''s complicated');
    create domain types_all.positive as int check (value > 0);
    create table types_all.t (
      id int primary key,
      i2 smallint, i8 bigint, num numeric, num_nan numeric, num_scaled numeric(20, 4),
      r4 real, f8 double precision,
      txt text, vc varchar(10), ch char(5),
      ts timestamptz, ts_plain timestamp, d date, tm time, iv interval,
      ints int[], texts text[], matrix int[][],
      j json, jb jsonb, x xml, pt point, b bytea,
      mood types_all.mood, pos types_all.positive,
      doubled int generated always as (pos * 2) stored,
      u uuid, yes boolean, no boolean,
      ip inet, null_text text, null_int int, null_jsonb jsonb);
    select outbox.enable_capture('types_all.t');
    insert into types_all.t (
      id, i2, i8, num, num_nan, num_scaled, r4, f8, txt, vc, ch, ts, ts_plain, d, tm, iv,
      ints, texts, matrix, j, jb, x, pt, b, mood, pos, u, yes, no, ip)
    values (
      1, -32768, 9223372036854775807, 12345678901234567890.123456789, 'NaN', 1.5,
      1.5, 0.1, E'line\\nbreak "quoted" \\\\ back ☃', 'short', 'ab',
      '2024-02-29 23:59:59.123456+05:30', '2024-01-02 03:04:05.5', '2024-02-29', '13:14:15.5',
      '1 year 2 mons 3 days 04:05:06',
      '{1,2,NULL}', '{"a","b c",NULL,"d\\"e"}', '{{1,2},{3,4}}',
      '{"k": [1, 2], "dup": 1}', '{"k": {"z": 1.10}}', '<a x="1">t &amp; u</a>', '(1.5,-2)',
      '\\x00ff10', 'it''s complicated', 5,
      'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', true, false, '10.1.2.3/16');`);

  const [row] = await db.sql<Record<string, string | null>[]>`
    select
      n->'num' #>> '{}' as num_text, (n->'num')::text as num_json,
      (n->'i8')::text as i8_json,
      n->>'num_nan' as num_nan, (n->'num_scaled')::text as num_scaled,
      (n->>'ts')::timestamptz = '2024-02-29 23:59:59.123456+05:30'::timestamptz as ts_same_instant,
      n->>'ts_plain' as ts_plain, n->>'d' as d, n->>'tm' as tm,
      (n->>'iv')::interval = '1 year 2 mons 3 days 04:05:06'::interval as iv_same,
      (n->'ints')::text as ints, (n->'texts')::text as texts, (n->'matrix')::text as matrix,
      jsonb_typeof(n->'j') as j_type, (n->'j')::text as j, (n->'jb')::text as jb,
      n->>'x' as x, n->>'pt' as pt, (n->>'pt')::point ~= point(1.5, -2) as pt_same,
      n->>'b' as b, (n->>'b')::bytea = decode('00ff10', 'hex') as b_same,
      n->>'mood' as mood, (n->'pos')::text as pos, (n->'doubled')::text as doubled,
      n->>'u' as u, (n->'yes')::text as yes, (n->'no')::text as no,
      n->>'txt' as txt, n->>'vc' as vc, n->>'ch' as ch, n->>'ip' as ip,
      (n->'null_text')::text as null_text, (n->'null_int')::text as null_int,
      (n->'null_jsonb')::text as null_jsonb,
      n ? 'null_text' and n ? 'null_int' and n ? 'null_jsonb' as nulls_present,
      (jsonb_populate_record(null::types_all.t, n))::text = (select t::text from types_all.t t) as record_round_trip
    from (select payload->'new' as n from outbox.events where schema_name = 'types_all') e`;
  assert.ok(row, "one insert event");
  assert.equal(row.num_text, "12345678901234567890.123456789", "numeric keeps every digit");
  assert.equal(row.num_json, "12345678901234567890.123456789", "numeric is a JSON number, exact");
  assert.equal(row.i8_json, "9223372036854775807", "bigint beyond 2^53 is exact");
  assert.equal(row.num_nan, "NaN");
  assert.equal(row.num_scaled, "1.5000", "numeric(20,4) keeps its scale");
  assert.equal(row.ts_same_instant, true);
  assert.equal(row.ts_plain, "2024-01-02T03:04:05.5");
  assert.equal(row.d, "2024-02-29");
  assert.equal(row.tm, "13:14:15.5");
  assert.equal(row.iv_same, true);
  assert.equal(row.ints, "[1, 2, null]");
  assert.equal(row.texts, '["a", "b c", null, "d\\"e"]');
  assert.equal(row.matrix, "[[1, 2], [3, 4]]");
  assert.equal(row.j_type, "object", "json is embedded as JSON, not as a string");
  assert.equal(row.j, '{"k": [1, 2], "dup": 1}');
  assert.equal(row.jb, '{"k": {"z": 1.10}}');
  assert.equal(row.x, '<a x="1">t &amp; u</a>');
  assert.equal(row.pt, "(1.5,-2)");
  assert.equal(row.pt_same, true);
  assert.equal(row.b, "\\x00ff10");
  assert.equal(row.b_same, true);
  assert.equal(row.mood, "it's complicated");
  assert.equal(row.pos, "5", "a domain appears as its base type");
  assert.equal(row.doubled, "10", "a stored generated column is computed in the image");
  assert.equal(row.u, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
  assert.equal(row.yes, "true");
  assert.equal(row.no, "false");
  assert.equal(row.txt, 'line\nbreak "quoted" \\ back ☃');
  assert.equal(row.vc, "short");
  assert.equal(row.ch, "ab   ");
  assert.equal(row.ip, "10.1.2.3/16");
  assert.equal(row.null_text, "null");
  assert.equal(row.null_int, "null");
  assert.equal(row.null_jsonb, "null");
  assert.equal(row.nulls_present, true, "NULL columns are present as JSON null");
  assert.equal(row.record_round_trip, true, "jsonb_populate_record of `new` gives back the stored row");
});

test("json, xml and point columns (no `=` operator) can be updated, and `changed` is right", async () => {
  // Every option path of the trigger: plain (row comparison), exclude_columns and columns
  // (jsonb comparison).
  await db.sql.unsafe(`
    create schema types_noeq;
    create table types_noeq.plain (id int primary key, j json, x xml, pt point, note text, secret text);
    create table types_noeq.excl (like types_noeq.plain including all);
    create table types_noeq.cols (like types_noeq.plain including all);
    select outbox.enable_capture('types_noeq.plain');
    select outbox.enable_capture('types_noeq.excl', exclude_columns => '{secret}');
    select outbox.enable_capture('types_noeq.cols', columns => '{j,pt}');`);
  for (const table of ["plain", "excl", "cols"]) {
    await db.sql.unsafe(`
      insert into types_noeq.${table} values (1, '{"a": 1}', '<a/>', '(1,1)', 'n', 's'), (2, '[1]', '<b/>', '(2,2)', 'n', 's');
      update types_noeq.${table} set j = '{"a": 2}' where id = 1;
      update types_noeq.${table} set x = '<c/>', pt = '(3,3)' where id = 2;
      update types_noeq.${table} set note = 'm', j = j, x = x, pt = pt;`);
    const updates = (await payloads("types_noeq", table)).filter((e) => e.op === "update");
    const expected =
      table === "cols"
        ? // with `columns`, only changes of j or pt make an event; `changed` lists every changed column
          [["j"], ["pt", "x"]]
        : [["j"], ["pt", "x"], ["note"], ["note"]];
    assert.deepEqual(
      updates.map((e) => e.payload.changed),
      expected,
      `${table}: events and their changed lists`,
    );
    assert.deepEqual(updates[0]!.payload.new!.j, { a: 2 });
    assert.deepEqual(updates[0]!.payload.old!.j, { a: 1 });
    assert.equal(updates[1]!.payload.new!.x, "<c/>");
    assert.equal(updates[1]!.payload.new!.pt, "(3,3)");
    if (table === "excl") assert.ok(updates.every((e) => !("secret" in e.payload.new!) && !("secret" in e.payload.old!)));
  }
  const rows = await db.sql`select * from types_noeq.plain order by id`;
  assert.equal(rows[0]!.note, "m", "the user's UPDATE did its work");
});

test("a TOASTed 1 MB value is captured intact; an UPDATE not touching it works and does not list it", async () => {
  await db.sql.unsafe(`
    create schema types_toast;
    create table types_toast.docs (id int primary key, title text, body text, blob bytea);
    -- external: stored out of line and uncompressed, whatever the content
    alter table types_toast.docs alter column body set storage external;
    select outbox.enable_capture('types_toast.docs');
    insert into types_toast.docs
    select 1, 'first',
           (select string_agg(md5(i::text), '') from generate_series(1, 32768) i),
           (select decode(string_agg(md5(i::text), ''), 'hex') from generate_series(1, 32768) i);
    update types_toast.docs set title = 'second';`);
  const [stored] = await db.sql<{ body_bytes: number; blob_bytes: number }[]>`
    select octet_length(body) as body_bytes, octet_length(blob) as blob_bytes
    from types_toast.docs`;
  assert.equal(stored!.body_bytes, 1_048_576, "a 1 MB text");
  assert.equal(stored!.blob_bytes, 524_288);

  const checks = await db.sql<{ op: string; new_body_ok: boolean; old_body_ok: boolean | null; blob_ok: boolean; changed: string[] | null }[]>`
    select e.op,
           e.payload->'new'->>'body' = d.body as new_body_ok,
           e.payload->'old'->>'body' = d.body as old_body_ok,
           (e.payload->'new'->>'blob')::bytea = d.blob as blob_ok,
           array(select jsonb_array_elements_text(e.payload->'changed')) as changed
    from outbox.events e, types_toast.docs d
    where e.schema_name = 'types_toast' order by e.position`;
  assert.deepEqual(
    checks.map((c) => c.op),
    ["insert", "update"],
  );
  assert.equal(checks[0]!.new_body_ok, true, "insert image carries the whole 1 MB text");
  assert.equal(checks[0]!.blob_ok, true, "and the whole bytea");
  assert.equal(checks[1]!.new_body_ok, true, "update's new image still carries the unchanged large value");
  assert.equal(checks[1]!.old_body_ok, true, "and so does its old image");
  assert.deepEqual(checks[1]!.changed, ["title"], "the untouched large columns are not in changed");
  const [{ title }] = await db.sql<{ title: string }[]>`select title from types_toast.docs`;
  assert.equal(title, "second");
});
