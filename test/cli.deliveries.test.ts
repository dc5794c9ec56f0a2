/**
 * `outbox deliveries`, `redeliver`, `replay` and `tail`, run as real processes against a real
 * database: what they change, exit codes, `--json` output and errors for bad input.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { capturedTable, dispatchOnce } from "./deliveryHelpers.js";
import { useTestDatabase, waitFor } from "./harness.js";
import { runOutbox, startOutboxCommand } from "./outboxCommand.js";

const db = useTestDatabase();

function outbox(...args: string[]) {
  return runOutbox(args, { DATABASE_URL: db.url });
}

interface ListedDelivery {
  id: string;
  eventId: string;
  topic: string;
  subscription: string;
  status: string;
  attempts: number;
  lastError: string | null;
}

/** Delivery ids of `cli_orders` rows 1..3 for subscription `orders_feed`, by row id. */
const ids: Record<number, string> = {};

/**
 * Three deliveries to a notify subscription: row 1 dead, row 2 delivered, row 3 pending.
 * Run by the first test (a top-level before hook would run ahead of the harness's).
 */
async function setUp(): Promise<void> {
  await capturedTable(db.sql, "cli_orders");
  await db.sql`insert into outbox.subscriptions (name, pattern, kind, config) values ('orders_feed', 'public.cli_orders.*', 'notify', '{"channel": "orders_feed"}')`;
  await db.sql`insert into cli_orders (id, status) values (1, 'new'), (2, 'new'), (3, 'new')`;
  await dispatchOnce(db.sql);
  const rows = await db.sql<{ id: string; row_id: number }[]>`
    select d.id::text, (e.key ->> 'id')::int as row_id
    from outbox.deliveries d join outbox.events e on e.id = d.event_id where d.subscription = 'orders_feed'`;
  for (const r of rows) ids[r.row_id] = r.id;
  await db.sql`update outbox.deliveries set status = 'dead', attempts = 25, last_error = 'HTTP 500: boom' where id = ${ids[1]!}`;
  await db.sql`update outbox.deliveries set status = 'delivered', attempts = 1, delivered_at = now() where id = ${ids[2]!}`;
}

async function statusOf(id: string): Promise<{ status: string; attempts: number }> {
  const [row] = await db.sql<{ status: string; attempts: number }[]>`select status, attempts from outbox.deliveries where id = ${id}`;
  return row!;
}

test("deliveries --status --subscription --json lists exactly the matching deliveries, with topic and last error", async () => {
  await setUp();
  const dead = outbox("deliveries", "--status", "dead", "--subscription", "orders_feed", "--json");
  assert.equal(dead.code, 0, dead.stderr);
  const rows = JSON.parse(dead.stdout) as ListedDelivery[];
  assert.deepEqual(
    rows.map((r) => ({ id: r.id, topic: r.topic, subscription: r.subscription, status: r.status, attempts: r.attempts, lastError: r.lastError })),
    [{ id: ids[1], topic: "public.cli_orders.insert", subscription: "orders_feed", status: "dead", attempts: 25, lastError: "HTTP 500: boom" }],
  );

  const newest = JSON.parse(outbox("deliveries", "--limit", "1", "--json").stdout) as ListedDelivery[];
  assert.deepEqual(newest.map((r) => r.id), [ids[3]]);

  const text = outbox("deliveries", "--subscription", "orders_feed");
  assert.equal(text.code, 0, text.stderr);
  assert.equal(text.stdout.trim().split("\n").length, 3);
  assert.match(text.stdout, /orders_feed\s+dead\s+public\.cli_orders\.insert\s+attempts=25 .*HTTP 500: boom/);
  assert.equal(outbox("deliveries", "--subscription", "nobody").stdout.trim(), "no deliveries");
});

test("deliveries refuses an unknown status and a bad limit with exit 2", () => {
  const status = outbox("deliveries", "--status", "lost");
  assert.equal(status.code, 2);
  assert.match(status.stderr, /Allowed choices are pending, delivering, retrying, delivered, dead/);
  const limit = outbox("deliveries", "--limit", "0");
  assert.equal(limit.code, 2);
  assert.match(limit.stderr, /must be a whole number from 1 to 100000/);
});

test("redeliver puts a dead delivery back in line; all or none when one is still in line", async () => {
  const mixed = outbox("redeliver", ids[2]!, ids[3]!);
  assert.equal(mixed.code, 2);
  assert.match(mixed.stderr, new RegExp(`delivery ${ids[3]} is still in line`));
  assert.equal((await statusOf(ids[2]!)).status, "delivered", "nothing changed");

  const done = outbox("redeliver", ids[1]!, "--json");
  assert.equal(done.code, 0, done.stderr);
  assert.deepEqual(JSON.parse(done.stdout), { redelivered: [ids[1]] });
  assert.deepEqual(await statusOf(ids[1]!), { status: "pending", attempts: 0 });
});

test("redeliver of an unknown id exits 1, of a non-number exits 2", () => {
  const unknown = outbox("redeliver", "987654321");
  assert.equal(unknown.code, 1);
  assert.match(unknown.stderr, /no delivery 987654321/);
  const bad = outbox("redeliver", "12x");
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /delivery id "12x" is not a number: take the ids from `outbox deliveries`/);
});

test("replay --since a duration puts delivered and dead deliveries back in line and reports how many", async () => {
  await db.sql`update outbox.deliveries set status = 'delivered', delivered_at = now() where subscription = 'orders_feed'`;
  const future = outbox("replay", "orders_feed", "--since", new Date(Date.now() + 3_600_000).toISOString(), "--json");
  assert.equal(future.code, 0, future.stderr);
  assert.equal((JSON.parse(future.stdout) as { deliveries: number }).deliveries, 0);

  const replayed = outbox("replay", "orders_feed", "--since", "1h", "--json");
  assert.equal(replayed.code, 0, replayed.stderr);
  const result = JSON.parse(replayed.stdout) as { subscription: string; since: string; deliveries: number };
  assert.equal(result.subscription, "orders_feed");
  assert.equal(result.deliveries, 3);
  assert.ok(Math.abs(Date.parse(result.since) - (Date.now() - 3_600_000)) < 60_000, result.since);
  const statuses = await db.sql`select status from outbox.deliveries where subscription = 'orders_feed' and status <> 'pending'`;
  assert.equal(statuses.length, 0);
});

test("replay of an unknown subscription exits 1; a bad --since exits 2 and shows the accepted forms", () => {
  const unknown = outbox("replay", "nobody", "--since", "1h");
  assert.equal(unknown.code, 1);
  assert.match(unknown.stderr, /no subscription 'nobody'/);
  const bad = outbox("replay", "orders_feed", "--since", "last tuesday");
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /must be an ISO 8601 time \(2026-12-01T10:00:00Z\) or a duration back from now such as 90s, 30m, 1h, 2d/);
});

test("tail --from-now --json prints events committed after it started, a late-committing transaction included, and exits 0 on Ctrl-C", async () => {
  await db.sql`insert into cli_orders (id, status) values (100, 'before tail')`;
  // A transaction that takes its position before tail starts and commits after a later one.
  const late = await db.sql.reserve();
  try {
    await late`begin`;
    await late`insert into cli_orders (id, status) values (201, 'late')`;
    const tail = startOutboxCommand(["tail", "--from-now", "--json"], { DATABASE_URL: db.url });
    try {
      await waitFor(async () => tail.stderr().includes("tailing events committed from now on"), "tail to start", 30_000);
      await db.sql`insert into cli_orders (id, status) values (202, 'after')`;
      await waitFor(async () => tail.stdout().includes('"id":202'), "tail to print row 202");
      await late`commit`;
      await db.sql`select outbox.emit('cli.note', '{"n": 12345678901234567890}', 'k1')`;
      const lines = await waitFor(async () => {
        const out = tail.stdout().trim().split("\n").filter(Boolean);
        return out.length >= 3 ? out : undefined;
      }, "three events");
      const events = lines.map((line) => JSON.parse(line) as { type: string; new?: { id: number }; data?: unknown });
      assert.deepEqual(
        events.map((e) => `${e.type}${e.new ? `:${e.new.id}` : ""}`),
        ["public.cli_orders.insert:202", "public.cli_orders.insert:201", "cli.note"],
      );
      assert.match(lines[2]!, /12345678901234567890/, "numbers keep every digit");
    } finally {
      tail.child.kill("SIGINT");
      assert.equal(await tail.exited, 0, tail.stderr());
    }
  } finally {
    await late`rollback`.catch(() => undefined);
    late.release();
  }
});

test("tail --pattern reads from the oldest retained event and prints only matching topics; a bad pattern exits 2", async () => {
  const tail = startOutboxCommand(["tail", "--pattern", "cli.**"], { DATABASE_URL: db.url });
  try {
    const out = await waitFor(async () => (tail.stdout().includes("cli.note") ? tail.stdout() : undefined), "the emitted event", 30_000);
    assert.equal(out.trim().split("\n").length, 1, out);
    assert.match(out, /Z {2}cli\.note {2}key="k1" {2}\{"n":/);
  } finally {
    tail.child.kill("SIGINT");
    assert.equal(await tail.exited, 0, tail.stderr());
  }
  const bad = outbox("tail", "--pattern", "cli..x");
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /--pattern "cli\.\.x" is invalid/);
});
