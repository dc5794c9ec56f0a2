/**
 * Privileges: an application role with rights on its own table only can write to a captured
 * table (the capture trigger writes the event with pg-outbox's rights), and cannot touch
 * outbox._events itself.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { test } from "node:test";
import postgres, { type Sql } from "postgres";
import { useTestDatabase } from "./harness.js";

const db = useTestDatabase();

/** A login role of the test's own (roles are cluster-wide), dropped by `drop()`. */
async function appRole(): Promise<{ name: string; sql: Sql; drop: () => Promise<void> }> {
  const name = `outbox_app_${randomBytes(5).toString("hex")}`;
  // A password, for servers that ask for one (the embedded default does; trust ignores it).
  const password = randomBytes(12).toString("hex");
  await db.sql.unsafe(`create role ${name} login password '${password}'`);
  const url = new URL(db.url);
  url.username = name;
  url.password = password;
  const sql = postgres(url.toString(), { max: 1, onnotice: () => undefined });
  return {
    name,
    sql,
    drop: async () => {
      await sql.end({ timeout: 5 });
      await db.sql.unsafe(`drop owned by ${name}`);
      await db.sql.unsafe(`drop role ${name}`);
    },
  };
}

function isPermissionDenied(error: Error & { code?: string }): boolean {
  assert.equal(error.code, "42501", `expected permission denied, got ${error.code}: ${error.message}`);
  assert.match(error.message, /permission denied/);
  return true;
}

test("an application role with rights on its own table only writes to a captured table; its events appear", async () => {
  const role = await appRole();
  try {
    await db.sql.unsafe(`
      create schema priv_app;
      create table priv_app.orders (id serial primary key, status text, total numeric);
      create table priv_app.parts (id int, region text, primary key (id, region)) partition by list (region);
      create table priv_app.parts_eu partition of priv_app.parts for values in ('eu');
      select outbox.enable_capture('priv_app.orders');
      select outbox.enable_capture('priv_app.parts');
      grant usage on schema priv_app to ${role.name};
      grant select, insert, update, delete on priv_app.orders, priv_app.parts to ${role.name};
      grant usage on sequence priv_app.orders_id_seq to ${role.name};`);
    const [{ user }] = await role.sql<{ user: string }[]>`select current_user as user`;
    assert.equal(user, role.name);

    await role.sql.begin(async (tx) => {
      await tx`set local outbox.actor = 'user-7'`;
      const [{ id }] = await tx<{ id: number }[]>`insert into priv_app.orders (status, total) values ('new', 10) returning id`;
      await tx`update priv_app.orders set status = 'paid' where id = ${id}`;
      await tx`insert into priv_app.parts values (1, 'eu')`;
    });
    await role.sql`delete from priv_app.orders`;

    const events = await db.sql<{ topic: string; key: unknown; actor: string | null }[]>`
      select topic, key, payload->>'actor' as actor from outbox.events
      where schema_name = 'priv_app' order by position`;
    assert.deepEqual(
      events.map((e) => [e.topic, e.key, e.actor]),
      [
        ["priv_app.orders.insert", { id: 1 }, "user-7"],
        ["priv_app.orders.update", { id: 1 }, "user-7"],
        ["priv_app.parts.insert", { id: 1, region: "eu" }, "user-7"],
        ["priv_app.orders.delete", { id: 1 }, null],
      ],
    );
    const captures = await db.sql`select health from outbox.captures where schema_name = 'priv_app'`;
    assert.deepEqual(
      captures.map((c) => c.health),
      ["ok", "ok"],
    );
  } finally {
    await role.drop();
  }
});

test("an application role cannot insert into or select from outbox._events directly (42501)", async () => {
  const role = await appRole();
  try {
    await db.sql.unsafe(`
      create schema priv_direct;
      create table priv_direct.t (id int primary key);
      select outbox.enable_capture('priv_direct.t');
      grant usage on schema priv_direct to ${role.name};
      grant select, insert, update, delete on priv_direct.t to ${role.name};`);
    await role.sql`insert into priv_direct.t values (1)`;

    const attempts = [
      () => role.sql`insert into outbox._events (op, topic, count, rows) values ('emit', 'forged.event', 1, '[{}]')`,
      () => role.sql`select * from outbox._events`,
      () => role.sql`update outbox._events set rows = '[]'`,
      () => role.sql`delete from outbox._events`,
      () => role.sql`update outbox._captures set bypassed_statements = 0`,
    ];
    for (const attempt of attempts) await assert.rejects(attempt(), isPermissionDenied);

    // With USAGE on the schema (as an operator might grant for emit or the views), the
    // tables themselves still refuse.
    await db.sql.unsafe(`grant usage on schema outbox to ${role.name}`);
    for (const attempt of attempts) await assert.rejects(attempt(), isPermissionDenied);
    await assert.rejects(role.sql`select * from outbox.events`, isPermissionDenied);

    const [{ count }] = await db.sql<{ count: number }[]>`
      select count(*)::int as count from outbox.events where schema_name = 'priv_direct' or topic = 'forged.event'`;
    assert.equal(count, 1, "only the captured insert, nothing forged or removed");
  } finally {
    await role.drop();
  }
});
