import assert from "node:assert/strict";
import { test } from "node:test";
import { createOutbox } from "../src/outbox.js";
import { OutboxError } from "../src/errors.js";
import { useTestDatabase } from "./harness.js";
import { capturedTable, deliveriesOf, dispatchOnce } from "./deliveryHelpers.js";

const db = useTestDatabase();

// [pattern, topic, matches]
const patternCases: Array<[string, string, boolean]> = [
  // `*` alone matches every event, however many segments.
  ["*", "public.users.insert", true],
  ["*", "order", true],
  ["*", "order.placed", true],
  ["*", "a.b.c.d.e.f", true],
  // `*` as a segment is exactly one segment.
  ["public.users.*", "public.users.insert", true],
  ["public.users.*", "public.users.delete", true],
  ["public.users.*", "public.users", false],
  ["public.users.*", "public.users.a.b", false],
  ["public.users.*", "public.usersx.insert", false],
  ["public.users.*", "public.orders.insert", false],
  ["public.users.*", "xpublic.users.insert", false],
  ["*.*.delete", "public.users.delete", true],
  ["*.*.delete", "sales.orders.delete", true],
  ["*.*.delete", "public.users.insert", false],
  ["*.*.delete", "users.delete", false],
  ["*.*.delete", "a.public.users.delete", false],
  ["*.*.delete", "public.users.deleted", false],
  ["order.*", "order", false],
  // `**` is any number of segments, none included.
  ["order.**", "order", true],
  ["order.**", "order.placed", true],
  ["order.**", "order.a.b", true],
  ["order.**", "orders.placed", false],
  ["order.**", "preorder.placed", false],
  ["order.**", "shop.order.placed", false],
  ["**", "anything.at.all", true],
  ["**.delete", "public.users.delete", true],
  ["**.delete", "delete", true],
  ["**.delete", "public.users.deleted", false],
  // `**` in the middle.
  ["a.**.z", "a.z", true],
  ["a.**.z", "a.b.z", true],
  ["a.**.z", "a.b.c.d.z", true],
  ["a.**.z", "a.b.c", false],
  ["a.**.z", "a.z.y", false],
  ["a.**.z", "b.a.z", false],
  ["public.**.insert", "public.users.insert", true],
  ["public.**.insert", "public.users.update", false],
  // Literal segments: regex characters mean themselves.
  ["a+b.x", "a+b.x", true],
  ["a+b.x", "aab.x", false],
  ["a+b.x", "aaab.x", false],
  ["a?.x", "a?.x", true],
  ["a?.x", "a.x", false],
  ["[ab].x", "[ab].x", true],
  ["[ab].x", "a.x", false],
  ["(x)|y", "(x)|y", true],
  ["(x)|y", "y", false],
  ["a$b.^c", "a$b.^c", true],
  ["a\\d", "a\\d", true],
  ["a\\d", "a1", false],
  ["a{2}", "aa", false],
  ["a{2}", "a{2}", true],
  ["public.users.insert", "public.users.insert", true],
  ["public.users.insert", "public.users.insert.x", false],
  ["public.users.insert", "Public.users.insert", false],
];

test("topic_matches: `*`, `**` and literal segments, including regex characters", async () => {
  const rows = await db.sql<{ pattern: string; topic: string; matches: boolean }[]>`
    select c.pattern, c.topic, outbox.topic_matches(c.topic, c.pattern) as matches
    from unnest(${patternCases.map((c) => c[0])}::text[], ${patternCases.map((c) => c[1])}::text[]) with ordinality c(pattern, topic, n)
    order by c.n`;
  const wrong = rows
    .map((r, i) => ({ ...r, expected: patternCases[i]![2] }))
    .filter((r) => r.matches !== r.expected)
    .map((r) => `${r.pattern} ~ ${r.topic}: expected ${r.expected}, got ${r.matches}`);
  assert.deepEqual(wrong, []);
  assert.equal(rows.length, patternCases.length);
});

test("dispatch matches the pattern table exactly as topic_matches does (exact patterns are compared as text, the others by regex)", async () => {
  const patterns = [...new Set(patternCases.map((c) => c[0]))];
  const topics = [...new Set(patternCases.map((c) => c[1]))];
  for (const [i, pattern] of patterns.entries()) {
    await db.sql`insert into outbox.subscriptions (name, pattern, kind, active) values (${`pt_${i}`}, ${pattern}, 'handler', true)`;
  }
  // Topics emit refuses (a backslash is fine, none has a wildcard) would fail here, not pass silently.
  for (const topic of topics) await db.sql`select outbox.emit(${topic}, '{}')`;
  await dispatchOnce(db.sql);
  const rows = await db.sql<{ subscription: string; topic: string }[]>`
    select d.subscription, e.topic from outbox.deliveries d join outbox.events e on e.id = d.event_id
    where d.subscription like 'pt\_%'`;
  const delivered = new Set(rows.map((r) => `${r.subscription} ${r.topic}`));
  const wrong = patternCases
    .filter(([pattern, topic, matches]) => delivered.has(`pt_${patterns.indexOf(pattern)} ${topic}`) !== matches)
    .map(([pattern, topic, matches]) => `${pattern} ~ ${topic}: expected ${matches}`);
  assert.deepEqual(wrong, []);
  await db.sql`delete from outbox.subscriptions where name like 'pt\_%'`;
});

test("dispatch creates deliveries by pattern: one per matching subscription, none for the others", async () => {
  const insert = (name: string, pattern: string) =>
    db.sql`insert into outbox.subscriptions (name, pattern, kind) values (${name}, ${pattern}, 'handler')`;
  await insert("mp_placed", "shop.order.placed");
  await insert("mp_order_any", "shop.order.*");
  await insert("mp_shop_all", "shop.**");
  await insert("mp_other", "shop.invoice.*");
  await db.sql`select outbox.emit('shop.order.placed', '{"n": 1}'), outbox.emit('shop.order.paid', '{"n": 2}'),
                      outbox.emit('shop.order.item.added', '{"n": 3}')`;
  await dispatchOnce(db.sql);
  const topics = async (name: string) =>
    (await db.sql<{ type: string }[]>`
      select e.topic as type from outbox.deliveries d join outbox.events e on e.id = d.event_id
      where d.subscription = ${name} order by d.event_position`).map((r) => r.type);
  assert.deepEqual(await topics("mp_placed"), ["shop.order.placed"]);
  assert.deepEqual(await topics("mp_order_any"), ["shop.order.placed", "shop.order.paid"]);
  assert.deepEqual(await topics("mp_shop_all"), ["shop.order.placed", "shop.order.paid", "shop.order.item.added"]);
  assert.deepEqual(await topics("mp_other"), []);
  const statuses = await db.sql`select distinct status, attempts from outbox.deliveries where subscription like 'mp\\_%'`;
  assert.deepEqual([...statuses], [{ status: "pending", attempts: 0 }]);
});

test("tenant scoping: a subscription with a tenant gets only that tenant's events, one without gets all", async () => {
  await capturedTable(db.sql, "m_tn", "tenant_column => 'org'");
  await db.sql`
    insert into outbox.subscriptions (name, pattern, kind, tenant) values
      ('tn_org1', 'public.m_tn.*', 'handler', 'org-1'),
      ('tn_all', 'public.m_tn.*', 'handler', null),
      ('tn_emit_org1', 'tn.**', 'handler', 'org-1'),
      ('tn_emit_all', 'tn.**', 'handler', null)`;
  await db.sql`insert into m_tn (id, org) values (1, 'org-1'), (2, 'org-2'), (3, null)`;
  await db.sql.begin(async (tx) => {
    await tx`select set_config('outbox.tenant', 'org-1', true)`;
    await tx`insert into m_tn (id) values (4)`; // no tenant column value: outbox.tenant applies
    await tx`select outbox.emit('tn.a', '{}')`;
  });
  await db.sql.begin(async (tx) => {
    await tx`select set_config('outbox.tenant', 'org-2', true)`;
    await tx`select outbox.emit('tn.b', '{}')`;
  });
  await db.sql`select outbox.emit('tn.c', '{}')`;
  await dispatchOnce(db.sql);

  assert.deepEqual((await deliveriesOf(db.sql, "tn_org1")).map((r) => r.row_id), [1, 4]);
  assert.deepEqual((await deliveriesOf(db.sql, "tn_all")).map((r) => r.row_id), [1, 2, 3, 4]);
  const emitTopics = async (name: string) =>
    (await db.sql<{ topic: string }[]>`
      select e.topic from outbox.deliveries d join outbox.events e on e.id = d.event_id
      where d.subscription = ${name} order by d.event_position`).map((r) => r.topic);
  assert.deepEqual(await emitTopics("tn_emit_org1"), ["tn.a"]);
  assert.deepEqual(await emitTopics("tn_emit_all"), ["tn.a", "tn.b", "tn.c"]);
});

test("a jsonpath filter over the envelope decides which deliveries are created", async () => {
  await capturedTable(db.sql, "m_f");
  await db.sql`
    insert into outbox.subscriptions (name, pattern, kind, filter) values
      ('f_paid', 'public.m_f.*', 'handler', '$.new.status == "paid"'),
      ('f_email', 'public.m_f.*', 'handler', '$.changed[*] == "email"'),
      ('f_none', 'public.m_f.*', 'handler', null)`;
  await db.sql`insert into m_f (id, status) values (1, 'new')`; // 1: insert:1 (new)
  await db.sql`insert into m_f (id, status) values (2, 'paid')`; // 2: insert:2 (paid)
  await db.sql`update m_f set email = 'a@x' where id = 1`; // 3: update:1 email
  await db.sql`update m_f set email = 'b@x' where id = 2`; // 4: update:2 email, still paid
  await db.sql`update m_f set status = 'paid' where id = 1`; // 5: update:1 status -> paid
  await db.sql`delete from m_f where id = 2`; // 6: delete:2 (no new, no changed)
  await dispatchOnce(db.sql);
  const labels = async (name: string) => (await deliveriesOf(db.sql, name)).map((r) => `${r.op}:${r.row_id}`);
  assert.deepEqual(await labels("f_none"), ["insert:1", "insert:2", "update:1", "update:2", "update:1", "delete:2"]);
  assert.deepEqual(await labels("f_paid"), ["insert:2", "update:2", "update:1"]);
  assert.deepEqual(await labels("f_email"), ["update:1", "update:2"]);
});

const badRows: Array<[problem: string, columns: Record<string, string>, message: RegExp]> = [
  ["a pattern with an empty segment", { pattern: "'public..users'" }, /pattern 'public\.\.users' of subscription 'v_bad' is invalid/],
  ["a pattern with a wildcard inside a segment", { pattern: "'public.user*'" }, /pattern 'public\.user\*' of subscription 'v_bad' is invalid/],
  ["a filter that is not a predicate", { filter: "'$ ? (@.a == 1)'" }, /filter '\$ ?\? ?\(@\."?a"? == 1\)' of subscription 'v_bad' is not a predicate/],
  ["an unknown kind", { kind: "'kafka'" }, /violates check constraint "subscriptions_kind_check"/],
  ["a webhook without url", { kind: "'webhook'", config: "'{}'" }, /config\.url must be an http:\/\/ or https:\/\/ URL \(subscription 'v_bad', kind webhook\)/],
  ["a webhook with an ftp url", { kind: "'webhook'", config: `'{"url": "ftp://example.com/x"}'` }, /config\.url must be an http:\/\/ or https:\/\/ URL/],
  ["a webhook with a bad secret", { kind: "'webhook'", config: `'{"url": "http://127.0.0.1:9/x", "secret": "hunter2"}'` }, /config\.secret must be a string whsec_<base64>/],
  ["a webhook with an unknown config key", { kind: "'webhook'", config: `'{"url": "http://127.0.0.1:9/x", "uri": "x"}'` }, /config has unknown key 'uri' for kind webhook/],
  ["a notify without channel", { kind: "'notify'", config: "'{}'" }, /config\.channel must be a channel name of 1 to 63 characters/],
  ["a notify with an empty channel", { kind: "'notify'", config: `'{"channel": ""}'` }, /config\.channel must be a channel name/],
  ["a notify with a 64-character channel", { kind: "'notify'", config: `'{"channel": "${"c".repeat(64)}"}'` }, /config\.channel must be a channel name/],
  ["max_attempts 0", { max_attempts: "0" }, /violates check constraint "subscriptions_max_attempts_check"/],
];

for (const [problem, columns, message] of badRows) {
  test(`a subscription with ${problem} is rejected with a message naming the problem`, async () => {
    const row = { name: "'v_bad'", pattern: "'v.*'", kind: "'handler'", ...columns };
    await assert.rejects(
      db.sql.unsafe(`insert into outbox.subscriptions (${Object.keys(row).join(", ")}) values (${Object.values(row).join(", ")})`),
      (error: Error & { code?: string }) => {
        assert.match(error.message, message);
        assert.equal(error.code, "23514");
        return true;
      },
    );
    assert.equal((await db.sql`select 1 from outbox.subscriptions where name = 'v_bad'`).length, 0);
  });
}

test("an update that breaks a subscription is rejected too, and the row keeps its valid config", async () => {
  await db.sql`insert into outbox.subscriptions (name, pattern, kind, config) values ('v_upd', 'v.*', 'notify', '{"channel": "v_upd"}')`;
  await assert.rejects(db.sql`update outbox.subscriptions set config = '{}' where name = 'v_upd'`, /config\.channel must be/);
  await assert.rejects(db.sql`update outbox.subscriptions set pattern = 'v..x' where name = 'v_upd'`, /pattern 'v\.\.x' .* is invalid/);
  const [row] = await db.sql`select pattern, config from outbox.subscriptions where name = 'v_upd'`;
  assert.deepEqual(row, { pattern: "v.*", config: { channel: "v_upd" } });
});

test("subscribe() from TypeScript rejects the same bad rows with an invalid_input OutboxError", async () => {
  const outbox = createOutbox({ connectionString: db.url });
  try {
    await assert.rejects(outbox.subscribe({ name: "v_ts", pattern: "v.*", kind: "webhook", config: { url: "ftp://x" } }), (error: unknown) => {
      assert.ok(error instanceof OutboxError);
      assert.equal(error.code, "invalid_input");
      assert.match(error.message, /config\.url must be an http:\/\/ or https:\/\/ URL/);
      return true;
    });
    await assert.rejects(outbox.subscribe({ name: "v_ts", pattern: "v.*", kind: "handler", filter: "$ ? (@.a == 1)" }), /is not a predicate/);
    await outbox.subscribe({ name: "v_ts", pattern: "v.*", kind: "handler", filter: '$.data.ok == true' });
    const [row] = await db.sql`select filter::text as filter from outbox.subscriptions where name = 'v_ts'`;
    assert.equal(row!.filter, '($."data"."ok" == true)');
  } finally {
    await outbox.close();
  }
});
