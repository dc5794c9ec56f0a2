import assert from "node:assert/strict";
import { test } from "node:test";
import { useTestDatabase, waitFor } from "./harness.js";

const db = useTestDatabase();

interface EventRow {
  id: string;
  pos: string;
  topic: string;
  op: string;
  key: unknown;
  tenant: string | null;
  payload: Record<string, unknown> & { new?: Record<string, unknown>; old?: Record<string, unknown>; changed?: string[] };
}

async function events(table: string): Promise<EventRow[]> {
  return db.sql<EventRow[]>`
    select id, position::text as pos, topic, op, key, tenant, payload from outbox.events
    where table_name = ${table} order by position`;
}

/** A captured table of the test's own. */
async function captured(table: string, options = ""): Promise<void> {
  await db.sql.unsafe(`
    create table ${table} (id bigint primary key, email text, name text, password text, org text, version int default 1);
    select outbox.enable_capture('${table}'${options ? `, ${options}` : ""});`);
}

test("insert, update and delete each become one event with the envelope of DESIGN.md", async () => {
  await captured("c1", "exclude_columns => '{password}'");
  await db.sql`insert into c1 (id, email, password) values (1, 'a@x', 'secret')`;
  await db.sql`update c1 set email = 'b@x' where id = 1`;
  await db.sql`delete from c1 where id = 1`;
  const rows = await events("c1");
  assert.deepEqual(rows.map((r) => r.topic), ["public.c1.insert", "public.c1.update", "public.c1.delete"]);
  const [ins, upd, del] = rows.map((r) => r.payload);
  assert.equal(ins!.id, rows[0]!.id);
  assert.equal(ins!.type, "public.c1.insert");
  assert.equal(ins!.op, "insert");
  assert.deepEqual(ins!.table, { schema: "public", name: "c1" });
  assert.deepEqual(ins!.key, { id: 1 });
  assert.equal(ins!.new!.email, "a@x");
  assert.equal(ins!.old, null);
  assert.ok(!("password" in ins!.new!), "excluded column never appears");
  assert.match(String(ins!.time), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);
  assert.deepEqual(upd!.changed, ["email"]);
  assert.equal(upd!.old!.email, "a@x");
  assert.equal(upd!.new!.email, "b@x");
  assert.equal(del!.new, null);
  assert.deepEqual(del!.key, { id: 1 });
  assert.ok(!("password" in del!.old!));
});

test("a rolled-back transaction leaves no event", async () => {
  await captured("c2");
  await assert.rejects(
    db.sql.begin(async (tx) => {
      await tx`insert into c2 (id) values (1), (2)`;
      throw new Error("rollback");
    }),
    /rollback/,
  );
  assert.equal((await events("c2")).length, 0);
});

test("a rolled-back savepoint removes only its own events", async () => {
  await captured("c3");
  await db.sql.begin(async (tx) => {
    await tx`insert into c3 (id) values (1)`;
    await assert.rejects(
      tx.savepoint(async (sp) => {
        await sp`insert into c3 (id) values (2)`;
        await sp`update c3 set email = 'x' where id = 1`;
        throw new Error("undo savepoint");
      }),
    );
    await tx.savepoint(async (sp) => {
      await sp`insert into c3 (id) values (3)`;
    });
  });
  const rows = await events("c3");
  assert.deepEqual(rows.map((r) => [r.op, (r.key as { id: number }).id]), [["insert", 1], ["insert", 3]]);
});

test("concurrent transactions each see only their own uncommitted events", async () => {
  await captured("c4");
  const a = await db.sql.reserve();
  const b = await db.sql.reserve();
  try {
    await a`begin`;
    await b`begin`;
    await a`insert into c4 (id) values (1)`;
    await b`insert into c4 (id) values (2)`;
    const seenByA = await a<{ key: { id: number } }[]>`select key from outbox.events where table_name = 'c4'`;
    const seenByB = await b<{ key: { id: number } }[]>`select key from outbox.events where table_name = 'c4'`;
    assert.deepEqual(seenByA.map((r) => r.key.id), [1]);
    assert.deepEqual(seenByB.map((r) => r.key.id), [2]);
    assert.equal((await events("c4")).length, 0, "nothing visible before commit");
    await a`commit`;
    await b`rollback`;
  } finally {
    a.release();
    b.release();
  }
  assert.deepEqual((await events("c4")).map((r) => (r.key as { id: number }).id), [1]);
});

test("a 10,000-row statement makes 10,000 events with one trigger call per statement", async () => {
  await captured("c5");
  await db.sql`select pg_stat_clear_snapshot()`;
  const calls = async () =>
    Number((await db.sql<{ calls: string }[]>`
      select coalesce(sum(calls), 0)::text as calls from pg_stat_user_functions
      where funcid = 'outbox.tg_capture__write'::regproc`)[0]!.calls);
  await db.sql`set track_functions = 'pl'`;
  const reserved = await db.sql.reserve();
  try {
    await reserved`set track_functions = 'pl'`;
    const before = await calls();
    await reserved`insert into c5 (id, email) select g, 'u' || g || '@x' from generate_series(1, 10000) g`;
    await reserved`update c5 set version = version + 1`;
    await reserved`select pg_stat_force_next_flush()`.catch(() => undefined);
    await reserved`select 1`;
    await db.sql`select pg_stat_clear_snapshot()`;
    const after = await calls();
    assert.equal(after - before, 2, "one call for the INSERT statement, one for the UPDATE");
  } finally {
    reserved.release();
  }
  const [{ inserts, updates, distinct_ids }] = await db.sql<{ inserts: number; updates: number; distinct_ids: number }[]>`
    select count(*) filter (where op = 'insert')::int as inserts, count(*) filter (where op = 'update')::int as updates,
           count(distinct id)::int as distinct_ids
    from outbox.events where table_name = 'c5'`;
  assert.equal(inserts, 10000);
  assert.equal(updates, 10000);
  assert.equal(distinct_ids, 20000);
  const [{ keys }] = await db.sql<{ keys: number }[]>`
    select count(distinct key->>'id')::int as keys from outbox.events where table_name = 'c5' and op = 'update'
      and (payload->'new'->>'version')::int = (payload->'old'->>'version')::int + 1`;
  assert.equal(keys, 10000, "each update event pairs the old and new image of the same row");
});

test("an UPDATE that changes primary keys pairs each old row with its new row", async () => {
  await captured("c6");
  await db.sql`insert into c6 (id, email) select g, 'u' || g from generate_series(1, 500) g`;
  await db.sql`update c6 set id = id + 1000 where id % 2 = 0`;
  const rows = (await events("c6")).filter((r) => r.op === "update");
  assert.equal(rows.length, 250);
  for (const r of rows) {
    const oldId = Number(r.payload.old!.id);
    assert.equal(Number(r.payload.new!.id), oldId + 1000);
    assert.equal(r.payload.new!.email, r.payload.old!.email);
    assert.deepEqual(r.key, { id: oldId + 1000 }, "key is the new key; old carries the old one");
    assert.deepEqual(r.payload.changed, ["id"]);
  }
});

test("an UPDATE that changes nothing captured emits nothing; `columns` decides which changes count", async () => {
  await captured("c7", "columns => '{email}', exclude_columns => '{password}'");
  await db.sql`insert into c7 (id, email, name) values (1, 'a', 'n')`;
  await db.sql`update c7 set email = email`;
  await db.sql`update c7 set name = 'other'`;
  await db.sql`update c7 set password = 'p'`;
  await db.sql`update c7 set email = 'b', name = 'third'`;
  const updates = (await events("c7")).filter((r) => r.op === "update");
  assert.equal(updates.length, 1);
  assert.deepEqual(updates[0]!.payload.changed, ["email", "name"], "changed lists every changed column, new/old carry the whole row");
  assert.equal(updates[0]!.payload.new!.name, "third");

  await captured("c7b");
  await db.sql`insert into c7b (id, email) values (1, 'a')`;
  await db.sql`update c7b set email = 'a'`;
  assert.equal((await events("c7b")).filter((r) => r.op === "update").length, 0);
});

test("operations limits what is captured; re-enabling changes the options", async () => {
  await captured("c8", "operations => '{insert}'");
  await db.sql`insert into c8 (id) values (1)`;
  await db.sql`update c8 set email = 'x'`;
  await db.sql`delete from c8`;
  assert.deepEqual((await events("c8")).map((r) => r.op), ["insert"]);
  await db.sql`select outbox.enable_capture('c8', operations => '{delete}')`;
  await db.sql`insert into c8 (id) values (2)`;
  await db.sql`delete from c8`;
  assert.deepEqual((await events("c8")).map((r) => r.op), ["insert", "delete"]);
  const [capture] = await db.sql`select operations from outbox.captures where table_name = 'c8'`;
  assert.deepEqual(capture!.operations, ["delete"]);
  const [{ count }] = await db.sql<{ count: number }[]>`select count(*)::int as count from outbox.captures where table_name = 'c8'`;
  assert.equal(count, 1, "idempotent: still one capture row");
});

test("TRUNCATE is refused while deletes are captured, and captured as one event when asked", async () => {
  await captured("c9");
  await db.sql`insert into c9 (id) values (1)`;
  await assert.rejects(db.sql`truncate c9`, (e: Error & { hint?: string }) => {
    assert.match(e.message, /TRUNCATE of captured table public\.c9/);
    assert.match(e.hint ?? "", /truncate/);
    return true;
  });
  await db.sql`select outbox.enable_capture('c9', operations => '{insert,update,delete,truncate}')`;
  await db.sql`truncate c9`;
  const last = (await events("c9")).at(-1)!;
  assert.equal(last.topic, "public.c9.truncate");
  assert.equal(last.key, null);
});

test("disable_capture removes the triggers and keeps the events already written", async () => {
  await captured("c10");
  await db.sql`insert into c10 (id) values (1)`;
  await db.sql`select outbox.disable_capture('c10')`;
  await db.sql`insert into c10 (id) values (2)`;
  assert.equal((await events("c10")).length, 1);
  const triggers = await db.sql`select tgname from pg_trigger where tgrelid = 'c10'::regclass and not tgisinternal`;
  assert.equal(triggers.length, 0);
  assert.equal((await db.sql`select 1 from outbox.captures where table_name = 'c10'`).length, 0);
});

test("context set with set local reaches the envelope; the tenant column wins over outbox.tenant", async () => {
  await captured("c11", "tenant_column => 'org'");
  await db.sql.begin(async (tx) => {
    await tx`select set_config('outbox.actor', 'user-7', true), set_config('outbox.correlation_id', 'corr-1', true),
                    set_config('outbox.causation_id', 'cause-1', true), set_config('outbox.traceparent', '00-abc-def-01', true),
                    set_config('outbox.tenant', 'from-setting', true)`;
    await tx`insert into c11 (id, org) values (1, 'org-1'), (2, null)`;
  });
  const [a, b] = await events("c11");
  assert.equal(a!.payload.actor, "user-7");
  assert.equal(a!.payload.correlation_id, "corr-1");
  assert.equal(a!.payload.causation_id, "cause-1");
  assert.equal(a!.payload.traceparent, "00-abc-def-01");
  assert.equal(a!.tenant, "org-1");
  assert.equal(a!.payload.tenant, "org-1");
  assert.equal(b!.tenant, "from-setting", "a row without a tenant falls back to outbox.tenant");
  await db.sql`insert into c11 (id) values (3)`;
  const c = (await events("c11"))[2]!;
  assert.ok(!("actor" in c.payload) && !("tenant" in c.payload), "context does not leak across transactions");
});

test("emit writes an app event in the caller's transaction and returns its id", async () => {
  const [{ id }] = await db.sql<{ id: string }[]>`select outbox.emit('order.placed', '{"total": 12.50}', 'order-1') as id`;
  const [row] = await db.sql<EventRow[]>`select id, topic, op, key, payload from outbox.events where id = ${id}`;
  assert.equal(row!.topic, "order.placed");
  assert.equal(row!.op, "emit");
  assert.equal(row!.key, "order-1");
  assert.deepEqual(row!.payload.data, { total: 12.5 });
  assert.equal(row!.payload.type, "order.placed");
  assert.equal(row!.payload.id, id);
  assert.ok(!("new" in row!.payload) && !("op" in row!.payload));
  await assert.rejects(
    db.sql.begin(async (tx) => {
      await tx`select outbox.emit('order.cancelled', '{}')`;
      throw new Error("rollback");
    }),
  );
  assert.equal((await db.sql`select 1 from outbox.events where topic = 'order.cancelled'`).length, 0);
});

test("event ids are unique uuids that map back to their position", async () => {
  await captured("c12");
  await db.sql`insert into c12 (id) select generate_series(1, 2500)`;
  const rows = await db.sql<{ ok: boolean; v: string }[]>`
    select bool_and(outbox._event_position(id) = position) as ok, min(substr(id::text, 15, 1)) as v
    from outbox.events where table_name = 'c12'`;
  assert.equal(rows[0]!.ok, true);
  assert.equal(rows[0]!.v, "7", "UUIDv7 layout");
  // The layout, computed independently: 48 bits of Unix milliseconds, version 7, the
  // position's top bit, the variant (binary 10), the position's other 62 bits. Stored
  // deliveries keep ids computed by earlier versions of the function: they must not change.
  const vectors = await db.sql<{ id: string; ms: string; position: string }[]>`
    select outbox._event_uuid(t, p)::text as id, floor(extract(epoch from t) * 1000)::text as ms, p::text as position
    from (values (timestamptz '2026-12-02 20:11:01.069123+00', 0::bigint),
                 (timestamptz '1970-01-01 00:00:00.001+00', 123456789012::bigint),
                 (timestamptz '2300-06-30 23:59:59.999999+00', 9223372036854775807::bigint),
                 (now(), (4611686018427387904::bigint) + 65537)) v(t, p)`;
  for (const { id, ms, position } of vectors) {
    const p = BigInt(position);
    const high = (BigInt(ms) << 16n) | 0x7000n | ((p >> 62n) & 1n);
    const low = (p & ((1n << 62n) - 1n)) | (1n << 63n);
    const hex = high.toString(16).padStart(16, "0") + low.toString(16).padStart(16, "0");
    const expected = `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
    assert.equal(id, expected, `uuid of position ${position} at ${ms} ms`);
  }
});

for (const [name, call, pattern] of [
  ["a view", "select outbox.enable_capture('v_bad')", /v_bad is a view, not a table/],
  ["a missing table", "select outbox.enable_capture('no_such_table')", /relation "no_such_table" does not exist/],
  ["an unknown operation", "select outbox.enable_capture('bad_in', operations => '{insert,upsert}')", /unknown operation 'upsert'/],
  ["an empty operation list", "select outbox.enable_capture('bad_in', operations => '{}')", /operations is empty/],
  ["a column the table lacks", "select outbox.enable_capture('bad_in', columns => '{emial}')", /bad_in has no column emial/],
  ["an excluded column the table lacks", "select outbox.enable_capture('bad_in', exclude_columns => '{pwd}')", /bad_in has no column pwd/],
  ["a tenant column the table lacks", "select outbox.enable_capture('bad_in', tenant_column => 'tenant')", /bad_in has no column tenant/],
  ["an excluded key column", "select outbox.enable_capture('bad_in', exclude_columns => '{id}')", /key column of public\.bad_in cannot be excluded/],
  ["a table without primary key", "select outbox.enable_capture('bad_nokey')", /bad_nokey has no primary key/],
  ["a topic with a wildcard", "select outbox.emit('order.*', '{}')", /invalid topic 'order\.\*'/],
  ["a topic with an empty segment", "select outbox.emit('order..placed', '{}')", /invalid topic/],
] as const) {
  test(`bad input is refused with a clear error, nothing half-installed: ${name}`, async () => {
    await db.sql.unsafe(`
      create table if not exists bad_in (id int primary key, email text);
      create table if not exists bad_nokey (id int, email text);
      create or replace view v_bad as select * from bad_in;`);
    await assert.rejects(db.sql.unsafe(call), pattern);
    const leftovers = await db.sql`
      select tgname from pg_trigger where tgrelid in ('bad_in'::regclass, 'bad_nokey'::regclass) and not tgisinternal
      union all select target::text from outbox._captures where target in ('bad_in'::regclass, 'bad_nokey'::regclass)`;
    assert.deepEqual([...leftovers], []);
  });
}

test("writes notify outbox_wake only while a worker is marked idle", async () => {
  await captured("c13");
  const received: string[] = [];
  try {
    const unlisten = await db.sql.listen("outbox_wake", (payload) => received.push(payload));
    await db.sql`delete from outbox._workers`;
    for (let i = 1; i <= 5; i++) await db.sql`insert into c13 (id) values (${i})`;
    await db.sql`insert into outbox._workers (id, idle_until) values ('idle-test', now() + interval '1 minute')`;
    await db.sql`insert into c13 (id) values (6)`;
    await db.sql`select outbox.emit('wake.test', '{}')`;
    await waitFor(async () => received.length >= 2, "the notifications of the writes made while idle");
    // Notifications arrive in commit order: any from the first five writes would be here.
    assert.equal(received.length, 2);
    await db.sql`update outbox._workers set idle_until = now() - interval '1 second' where id = 'idle-test'`;
    await db.sql`insert into c13 (id) values (7)`;
    await db.sql`insert into outbox._workers (id, idle_until) values ('idle-test-2', now() + interval '1 minute')`;
    await db.sql`insert into c13 (id) values (8)`;
    await waitFor(async () => received.length >= 3, "the notification of the write after the new idle mark");
    assert.equal(received.length, 3, "an expired idle mark does not make writes notify");
    await unlisten.unlisten();
  } finally {
    await db.sql`delete from outbox._workers where id like 'idle-test%'`;
  }
});
