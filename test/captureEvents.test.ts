/**
 * `outbox.captureEvents`: the events of transactions that committed while a block ran, and
 * the assertions apps write with them. Also the TypeScript pattern rule they use, checked
 * against the SQL one.
 */
import assert from "node:assert/strict";
import { AssertionError } from "node:assert";
import { after, test } from "node:test";
import { createOutbox, type Outbox } from "../src/outbox.js";
import { topicMatches } from "../src/topicMatches.js";
import { capturedTable } from "./deliveryHelpers.js";
import { useTestDatabase } from "./harness.js";

const db = useTestDatabase();
let api: Outbox | undefined;
after(async () => {
  await api?.close();
});

/** The Outbox API on the test database (created once the harness made it). */
async function outbox(): Promise<Outbox> {
  if (!api) {
    api = createOutbox({ connectionString: db.url });
    await capturedTable(db.sql, "c_users");
  }
  return api;
}

test("captureEvents returns the block's committed events as envelopes in order, with assertions", async () => {
  const o = await outbox();
  await db.sql`insert into c_users (id, email) values (1, 'before@x')`;
  const events = await o.captureEvents(async () => {
    await o.sql.begin(async (tx) => {
      await tx`insert into c_users (id, email) values (2, 'ada@x'), (3, 'bob@x')`;
      await o.emit(tx, "user.welcomed", { plan: "pro" }, { key: "2" });
    });
    await o.sql`update c_users set email = 'ada@lovelace' where id = 2`;
    await o.sql
      .begin(async (tx) => {
        await tx`insert into c_users (id, email) values (4, 'never@x')`;
        throw new Error("rolled back on purpose");
      })
      .catch(() => undefined);
  });

  assert.deepEqual(events.types(), ["public.c_users.insert", "public.c_users.insert", "user.welcomed", "public.c_users.update"]);
  assert.equal(events.length, 4);
  assert.equal([...events].length, 4, "iterable");
  assert.equal(events.ofType("public.c_users.*").length, 3);
  assert.equal(events.ofType("public.c_users.insert").length, 2);
  const [welcome] = events.assertEmitted("user.welcomed", (e) => (e.data as { plan: string }).plan === "pro");
  assert.equal(welcome!.type, "user.welcomed");
  assert.match(welcome!.id, /^[0-9a-f-]{36}$/);
  const [update] = events.assertCount("public.c_users.update", 1);
  assert.deepEqual(update!.changed, ["email"]);
  assert.deepEqual(update!.old, { id: 2, status: null, email: "ada@x", org: null, body: null, version: 1 });
  events.assertNotEmitted("public.c_users.delete");
  events.assertNotEmitted("public.c_users.insert", (e) => e.new?.email === "never@x");
});

test("failed assertions throw AssertionError saying what was expected and what was captured", async () => {
  const o = await outbox();
  const events = await o.captureEvents(async () => {
    await o.emit(o.sql, "order.paid", { total: 5 });
    await o.emit(o.sql, "order.paid", { total: 7 });
  });
  assert.throws(() => events.assertEmitted("order.refunded"), (error: unknown) => {
    assert.ok(error instanceof AssertionError);
    assert.equal(error.message, "expected an event order.refunded, but none was captured; captured: order.paid ×2");
    return true;
  });
  assert.throws(() => events.assertEmitted("order.paid", (e) => (e.data as { total: number }).total > 100), /expected an event order\.paid satisfying the predicate, but none was captured/);
  assert.throws(() => events.assertNotEmitted("order.*"), /expected no event order\.\*, but 2 were captured/);
  assert.throws(() => events.assertCount("order.paid", 1), /expected 1 events order\.paid, but 2 were captured/);
  assert.throws(() => events.assertNothingEmitted(), /expected no events, but 2 were captured/);
  (await o.captureEvents(async () => undefined)).assertNothingEmitted();
});

test("what counts is commit time: a transaction open before the block that commits during it is in, one still open after it is out", async () => {
  const o = await outbox();
  const early = await db.sql.reserve();
  const late = await db.sql.reserve();
  try {
    await early`begin`;
    await early`insert into c_users (id, email) values (10, 'early@x')`;
    const events = await o.captureEvents(async () => {
      await late`begin`;
      await late`insert into c_users (id, email) values (11, 'late@x')`;
      await o.sql`insert into c_users (id, email) values (12, 'inside@x')`;
      await early`commit`;
    });
    await late`commit`;
    assert.deepEqual(
      events.ofType("public.c_users.insert").map((e) => e.new?.id),
      [10, 12],
      "row 10 took its position first and committed inside; row 11 committed after the block",
    );
  } finally {
    await early`rollback`.catch(() => undefined);
    await late`rollback`.catch(() => undefined);
    early.release();
    late.release();
  }
});

test("topicMatches in TypeScript agrees with outbox.topic_matches on a table of topics and patterns", async () => {
  const topics = ["public.users.insert", "public.users.update", "order.paid", "order.eu.paid", "order", "a.b.c.d", "x-y.z+w", "weird(topic).insert"];
  const patterns = ["*", "public.users.*", "*.*.delete", "*.*.insert", "order.**", "order.*", "**", "**.paid", "a.**.d", "a.*", "x-y.*", "order", "weird(topic).*", "**.b.**"];
  const cases = topics.flatMap((topic) => patterns.map((pattern) => ({ topic, pattern })));
  const rows = await db.sql<{ topic: string; pattern: string; matches: boolean }[]>`
    select c ->> 'topic' as topic, c ->> 'pattern' as pattern, outbox.topic_matches(c ->> 'topic', c ->> 'pattern') as matches
    from jsonb_array_elements(${JSON.stringify(cases)}::text::jsonb) c`;
  assert.equal(rows.length, cases.length);
  for (const row of rows) {
    assert.equal(topicMatches(row.topic, row.pattern), row.matches, `${row.topic} ~ ${row.pattern}`);
  }
  assert.ok(rows.some((r) => r.matches) && rows.some((r) => !r.matches));
});
