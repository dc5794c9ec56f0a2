import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { after, test } from "node:test";
import { AddressPolicy } from "../src/transports/addressPolicy.js";
import { DEFAULT_DEACTIVATE_AFTER_FAILING_MS } from "../src/transports/endpointHealth.js";
import { useTestDatabase, waitFor } from "./harness.js";
import {
  emitEvents,
  startReceiver,
  startWebhookWorker,
  webhookDeliveries,
  webhookSubscription,
  type Receiver,
  type WebhookDelivery,
} from "./webhookReceiver.js";

const cleanups: Array<() => Promise<void>> = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});
const db = useTestDatabase();

async function receiver(...args: Parameters<typeof startReceiver>): Promise<Receiver> {
  const r = await startReceiver(...args);
  cleanups.push(() => r.close());
  return r;
}

type WebhookOptions = Parameters<typeof startWebhookWorker>[1];

/** Runs `fn` while workers with these webhook options run; stops them after. */
async function withWorkers(options: WebhookOptions[], fn: () => Promise<void>): Promise<void> {
  const workers = await Promise.all(options.map((o) => startWebhookWorker(db, o)));
  try {
    await fn();
  } finally {
    await Promise.all(workers.map((w) => w.stop()));
  }
}

/** Waits until `query` returns rows. */
async function rowsOf<T>(query: () => Promise<T[]>, what: string): Promise<T[]> {
  return waitFor(async () => {
    const rows = await query();
    return rows.length > 0 ? rows : undefined;
  }, what);
}

async function settled(subscription: string, what: string): Promise<WebhookDelivery> {
  return waitFor(async () => {
    const [row] = await webhookDeliveries(db.sql, subscription);
    return row && (row.status === "dead" || row.status === "delivered" || row.status === "retrying") ? row : undefined;
  }, what);
}

const defaultPolicy = new AddressPolicy();
const strictPolicy = new AddressPolicy({ allowPrivateNetworks: false });

const addressTable: Array<[address: string, byDefault: RegExp | null, whenStrict: RegExp | null]> = [
  ["169.254.169.254", /cloud metadata/, /cloud metadata/],
  ["fd00:ec2::254", /cloud metadata/, /cloud metadata/],
  ["100.100.100.200", /cloud metadata/, /cloud metadata/],
  ["::ffff:169.254.169.254", /cloud metadata/, /cloud metadata/],
  ["64:ff9b::a9fe:a9fe", /cloud metadata/, /cloud metadata/],
  ["169.254.10.20", /link-local/, /link-local/],
  ["fe80::1", /link-local/, /link-local/],
  ["febf::1", /link-local/, /link-local/],
  ["224.0.0.1", /not a unicast/, /not a unicast/],
  ["ff02::1", /not a unicast/, /not a unicast/],
  ["127.0.0.1", null, /loopback/],
  ["127.1.2.3", null, /loopback/],
  ["::1", null, /loopback/],
  ["0.0.0.0", null, /loopback/],
  ["::", null, /loopback/],
  ["::ffff:127.0.0.1", null, /loopback/],
  ["10.1.2.3", null, /private/],
  ["172.16.0.1", null, /private/],
  ["172.31.255.255", null, /private/],
  ["192.168.1.10", null, /private/],
  ["100.64.0.1", null, /private/],
  ["fc00::1", null, /private/],
  ["fd12:3456::1", null, /private/],
  ["::ffff:10.0.0.1", null, /private/],
  ["172.32.0.1", null, null],
  ["8.8.8.8", null, null],
  ["2001:db8::1", null, null],
  ["fec0::1", null, null],
];

for (const [address, byDefault, whenStrict] of addressTable) {
  test(`address policy: ${address} is ${byDefault ? "refused" : "allowed"} by default and ${whenStrict ? "refused" : "allowed"} without private networks`, () => {
    const defaultVerdict = defaultPolicy.refusal(address);
    const strictVerdict = strictPolicy.refusal(address);
    if (byDefault) assert.match(defaultVerdict ?? "", byDefault);
    else assert.equal(defaultVerdict, undefined);
    if (whenStrict) assert.match(strictVerdict ?? "", whenStrict);
    else assert.equal(strictVerdict, undefined);
  });
}

test("by default a webhook reaches loopback, and link-local and cloud metadata literals are dead at once with a clear last_error, without connecting", async () => {
  const r = await receiver();
  await withWorkers([{}], async () => {
    const refused: Array<[name: string, url: string, message: string]> = [
      ["p_metadata", "http://169.254.169.254/latest/meta-data", "address refused: 169.254.169.254 is a cloud metadata address, which webhooks may never reach"],
      ["p_metadata6", "http://[fd00:ec2::254]/latest", "address refused: fd00:ec2::254 is a cloud metadata address, which webhooks may never reach"],
      ["p_linklocal", "http://169.254.1.1:8080/x", "address refused: 169.254.1.1 is a link-local address, which webhooks may never reach"],
      ["p_linklocal6", "http://[fe80::1]/x", "address refused: fe80::1 is a link-local address, which webhooks may never reach"],
      ["p_mapped", "http://[::ffff:169.254.169.254]/x", "address refused: ::ffff:a9fe:a9fe is a cloud metadata address, which webhooks may never reach"],
    ];
    for (const [name, url] of refused) await webhookSubscription(db.sql, name, "p1.**", { url, timeout_ms: 30_000 });
    await webhookSubscription(db.sql, "p_loopback", "p1.**", { url: `${r.origin}/x` });
    await emitEvents(db.sql, "p1.created");
    for (const [name, , message] of refused) {
      const d = await settled(name, `${name} to be recorded`);
      assert.equal(d.status, "dead", name);
      assert.equal(d.attempts, 1);
      assert.equal(d.last_error, message);
      assert.equal(d.last_status, null);
    }
    const ok = await settled("p_loopback", "the loopback delivery");
    assert.equal(ok.status, "delivered", "loopback is allowed by default");
  });
});

test("with allowPrivateNetworks false, a host name is checked on the address it resolves to: localhost and private literals are refused", async () => {
  const r = await receiver();
  await withWorkers([{ allowPrivateNetworks: false }], async () => {
    await webhookSubscription(db.sql, "q_localhost", "q1.**", { url: `http://localhost:${r.port}/x` });
    await webhookSubscription(db.sql, "q_loopback", "q1.**", { url: `${r.origin}/x` });
    await webhookSubscription(db.sql, "q_loopback6", "q1.**", { url: `http://[::1]:${r.port}/x` });
    await webhookSubscription(db.sql, "q_private", "q1.**", { url: "http://10.20.30.40:8080/x", timeout_ms: 30_000 });
    await emitEvents(db.sql, "q1.created");
    const localhost = await settled("q_localhost", "the localhost delivery");
    assert.equal(localhost.status, "dead");
    assert.match(localhost.last_error!, /^address refused: localhost resolves to (127\.0\.0\.1|::1), a loopback address, refused because this worker does not allow private networks \(webhooks\.allowPrivateNetworks is false\)$/);
    for (const [name, address] of [["q_loopback", "127.0.0.1"], ["q_loopback6", "::1"], ["q_private", "10.20.30.40"]] as const) {
      const d = await settled(name, `${name} to be recorded`);
      assert.equal(d.status, "dead", name);
      assert.ok(d.last_error!.startsWith(`address refused: ${address} is a `), d.last_error!);
    }
    assert.equal(r.requests.length, 0, "nothing reached the receiver");
    assert.equal(r.connections, 0, "not even a connection");
  });
});

test("concurrency bounds the requests in flight for one subscription across workers", async () => {
  const r = await receiver((_, res) => setTimeout(() => res.writeHead(204).end(), 100));
  await withWorkers([{}, {}], async () => {
    await webhookSubscription(db.sql, "c_bounded", "c1.**", { url: `${r.origin}/x`, concurrency: 2 });
    for (let i = 0; i < 12; i++) await emitEvents(db.sql, "c1.created");
    await waitFor(async () => {
      const rows = await webhookDeliveries(db.sql, "c_bounded");
      return rows.length === 12 && rows.every((x) => x.status === "delivered");
    }, "12 deliveries", 20_000);
    assert.equal(r.maxInFlight, 2, "two at a time, never more");
  });
});

test("an endpoint failing without a success for the configured period is deactivated, shows why, and one SQL update re-activates it", async () => {
  let healthy = false;
  const r = await receiver((_, res) => (healthy ? res.writeHead(204).end() : res.writeHead(503, { "Retry-After": "1" }).end("maintenance")));
  await withWorkers([{ deactivateAfterFailingMs: 60_000 }], async () => {
    await webhookSubscription(db.sql, "f_down", "f1.**", { url: `${r.origin}/x` });
    await emitEvents(db.sql, "f1.created");
    const [health] = await rowsOf(
      () => db.sql<{ failing_since: Date }[]>`select failing_since from outbox.subscription_status where subscription = 'f_down' and failing_since is not null`,
      "the first failure to be recorded",
    );
    assert.ok(health!.failing_since.getTime() <= Date.now());
    // As if it had been failing for two minutes (the period is one minute here).
    await db.sql`update outbox._subscription_health set failing_since = now() - interval '2 minutes' where subscription = 'f_down'`;
    const [row] = await rowsOf(
      () => db.sql<{ active: boolean; disabled_reason: string }[]>`select active, disabled_reason from outbox.subscription_status where subscription = 'f_down' and not active`,
      "the subscription to be deactivated",
    );
    assert.match(row!.disabled_reason, /^the webhook endpoint has failed without a single success since \d{4}-\d\d-\d\dT[\d:.]+Z \(the limit is 60000 ms\); last error: HTTP 503: maintenance; after fixing it: update outbox\.subscriptions set active = true where name = 'f_down'$/);
    // The deactivation and the attempt's outcome are written separately: wait for both.
    const waiting = await waitFor(async () => {
      const [d] = await webhookDeliveries(db.sql, "f_down");
      return d?.status === "retrying" ? d : undefined;
    }, "its delivery to wait, retrying");
    const requestsWhenDeactivated = r.requests.length;
    // Retry-After: 1 would bring an attempt within a second if the subscription were active.
    await new Promise((resolve) => setTimeout(resolve, 1500));
    assert.equal(r.requests.length, requestsWhenDeactivated, "an inactive subscription gets no attempts");
    assert.equal((await webhookDeliveries(db.sql, "f_down"))[0]!.attempts, waiting.attempts);

    healthy = true;
    await db.sql`update outbox.subscriptions set active = true where name = 'f_down'`;
    const [back] = await db.sql<{ disabled_reason: string | null; failing_since: Date | null }[]>`
      select disabled_reason, failing_since from outbox.subscription_status where subscription = 'f_down'`;
    assert.deepEqual(back, { disabled_reason: null, failing_since: null }, "re-activation clears the reason and restarts the clock");
    await db.sql`update outbox.deliveries set next_attempt_at = now() where subscription = 'f_down'`;
    const delivered = await waitFor(async () => {
      const [d] = await webhookDeliveries(db.sql, "f_down");
      return d?.status === "delivered" ? d : undefined;
    }, "the waiting delivery to go out after re-activation");
    assert.ok(delivered.attempts >= 2);
    const [after] = await rowsOf(
      () => db.sql<{ last_success_at: Date | null }[]>`select last_success_at from outbox.subscription_status where subscription = 'f_down' and last_success_at is not null`,
      "the success to be recorded",
    );
    assert.ok(after!.last_success_at);
  });
});

test("a success resets the failing clock, and the default period is 3 days", async () => {
  assert.equal(DEFAULT_DEACTIVATE_AFTER_FAILING_MS, 3 * 24 * 3600 * 1000);
  await db.sql`insert into outbox.subscriptions (name, pattern, kind, config) values ('f_clock', 'f2.*', 'webhook', '{"url": "http://127.0.0.1:9/x"}')`;
  const record = async (ok: boolean) =>
    (await db.sql<{ since: Date | null }[]>`select outbox._subscription_health_record('f_clock', ${ok}, ${DEFAULT_DEACTIVATE_AFTER_FAILING_MS}::bigint) as since`)[0]!.since;
  assert.equal(await record(false), null, "a first failure starts the clock");
  await db.sql`update outbox._subscription_health set failing_since = now() - interval '2 days 23 hours' where subscription = 'f_clock'`;
  assert.equal(await record(false), null, "not yet 3 days");
  await db.sql`update outbox._subscription_health set failing_since = now() - interval '3 days 1 minute' where subscription = 'f_clock'`;
  assert.ok((await record(false)) instanceof Date, "past 3 days: deactivate");
  assert.equal(await record(true), null);
  assert.equal(await record(false), null, "after a success the clock starts again");
  const [row] = await db.sql<{ failing_since: Date; last_success_at: Date }[]>`
    select failing_since, last_success_at from outbox._subscription_health where subscription = 'f_clock'`;
  assert.ok(Date.now() - row!.failing_since.getTime() < 60_000);
  assert.ok(row!.last_success_at);
  await db.sql`update outbox.subscriptions set config = '{"url": "http://127.0.0.1:10/x"}' where name = 'f_clock'`;
  assert.equal((await db.sql`select 1 from outbox._subscription_health where subscription = 'f_clock'`).length, 0, "a new config restarts the clock too");
});

test("outbox worker takes the address policy from OUTBOX_WEBHOOKS_ALLOW_PRIVATE_NETWORKS, and refuses a value that is not true or false", async () => {
  const bad = spawnSync(process.execPath, ["--import", "tsx", "src/cli/main.ts", "worker"], {
    encoding: "utf8",
    env: { ...process.env, DATABASE_URL: db.url, OUTBOX_WEBHOOKS_ALLOW_PRIVATE_NETWORKS: "no" },
    timeout: 60_000,
  });
  assert.equal(bad.status, 3, bad.stderr);
  assert.match(bad.stderr, /OUTBOX_WEBHOOKS_ALLOW_PRIVATE_NETWORKS must be true or false/);

  const r = await receiver();
  await webhookSubscription(db.sql, "cli_private", "cli1.**", { url: `${r.origin}/x` });
  const child = spawn(process.execPath, ["--import", "tsx", "src/cli/main.ts", "worker"], {
    env: { ...process.env, DATABASE_URL: db.url, OUTBOX_LOG_LEVEL: "error", OUTBOX_HTTP_PORT: "off", OUTBOX_WEBHOOKS_ALLOW_PRIVATE_NETWORKS: "false" },
    stdio: "ignore",
  });
  const exited = new Promise<number | null>((resolve) => child.once("exit", resolve));
  try {
    await emitEvents(db.sql, "cli1.created");
    const d = await waitFor(async () => {
      const [row] = await webhookDeliveries(db.sql, "cli_private");
      return row?.status === "dead" ? row : undefined;
    }, "the worker process to refuse the loopback endpoint", 30_000);
    assert.match(d.last_error!, /^address refused: 127\.0\.0\.1 is a loopback address/);
    assert.equal(r.requests.length, 0);
  } finally {
    child.kill("SIGTERM");
    assert.equal(await exited, 0, "SIGTERM drains and exits 0");
  }
});

test("a stopping worker does not wait out a long timeout_ms: after its drain time the open request is aborted and the delivery handed back", async () => {
  let closedAt = 0;
  const silent = await receiver((_, _res, raw) => raw.socket.once("close", () => (closedAt = Date.now())));
  await webhookSubscription(db.sql, "o_stop", "o12.**", { url: `${silent.origin}/x`, timeout_ms: 120_000 });
  const own = await startWebhookWorker(db, {}, { drainTimeoutMs: 500 });
  try {
    await emitEvents(db.sql, "o12.created");
    await waitFor(async () => silent.requests.length === 1, "the request to be open");
  } finally {
    const t0 = Date.now();
    await own.stop();
    assert.ok(Date.now() - t0 < 5000, `stopped in ${Date.now() - t0} ms`);
  }
  await waitFor(async () => closedAt > 0, "the connection to be closed");
  const [d] = await webhookDeliveries(db.sql, "o_stop");
  assert.equal(d!.status, "retrying", "handed back for another attempt");
});
