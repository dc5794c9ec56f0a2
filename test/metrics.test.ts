/**
 * The worker's `/metrics` and `/healthz`, over real HTTP: counters that move with deliveries,
 * database gauges, readiness that fails when migrations are behind or the database is gone,
 * and `outbox worker` serving them on OUTBOX_HTTP_PORT.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import postgres from "postgres";
import { createOutbox } from "../src/outbox.js";
import { NonRetryableError } from "../src/transports/handler.js";
import { capturedTable, hastenRetries, statusCounts, workerMarkedIdle } from "./deliveryHelpers.js";
import { createTestDatabase, dropTestDatabase, useTestDatabase, waitFor } from "./harness.js";
import { startOutboxCommand } from "./outboxCommand.js";

const db = useTestDatabase();

/** Prometheus text exposition → `name{labels}` (labels sorted, `worker` left out) → value. */
function parseMetrics(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(match, `not a Prometheus sample line: ${line}`);
    const labels = [...(match[2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)]
      .filter(([, name]) => name !== "worker")
      .map(([, name, value]) => `${name}="${value}"`)
      .sort();
    samples.set(`${match[1]}${labels.length ? `{${labels.join(",")}}` : ""}`, Number(match[3]));
  }
  return samples;
}

async function get(port: number, path: string): Promise<{ status: number; type: string | null; body: string }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(20_000) });
  return { status: res.status, type: res.headers.get("content-type"), body: await res.text() };
}

async function scrape(port: number): Promise<Map<string, number>> {
  const res = await get(port, "/metrics");
  assert.equal(res.status, 200);
  assert.match(res.type ?? "", /^text\/plain; version=0\.0\.4/);
  return parseMetrics(res.body);
}

test("/metrics counts dispatched events, attempts by subscription and outcome, latency, and reads the backlog from the database", async () => {
  await capturedTable(db.sql, "m_rows");
  // No worker here registers this handler: its deliveries stay pending, a backlog to report.
  await db.sql`insert into outbox.subscriptions (name, pattern, kind) values ('m_elsewhere', 'public.m_rows.*', 'handler')`;
  const outbox = createOutbox({ connectionString: db.url, worker: { pollIntervalMs: 200, leaseMs: 2000, httpPort: 0, httpHost: "127.0.0.1" } });
  const flakyAttempts = new Map<string, number>();
  outbox.handle("m_ok", "public.m_rows.*", () => undefined);
  outbox.handle("m_flaky", "public.m_rows.*", (event) => {
    const n = (flakyAttempts.get(event.id) ?? 0) + 1;
    flakyAttempts.set(event.id, n);
    if (n === 1) throw new Error("first attempt fails");
  });
  outbox.handle("m_dead", "public.m_rows.*", () => {
    throw new NonRetryableError("never");
  });
  const worker = await outbox.start();
  try {
    assert.ok(worker.httpPort && worker.httpPort > 0, "the bound port is reported");
    const before = await scrape(worker.httpPort);
    assert.equal(before.get("outbox_events_dispatched_total"), 0);
    assert.equal(before.get("outbox_database_up"), 1);

    await db.sql`insert into m_rows (id, status) values (1, 'a'), (2, 'b'), (3, 'c')`;
    await waitFor(async () => {
      await hastenRetries(db.sql, "m_flaky");
      const [ok, flaky, dead] = await Promise.all(["m_ok", "m_flaky", "m_dead"].map((s) => statusCounts(db.sql, s)));
      return ok!.delivered === 3 && flaky!.delivered === 3 && dead!.dead === 3;
    }, "every delivery to settle", 30_000);

    const m = await scrape(worker.httpPort);
    assert.equal(m.get("outbox_events_dispatched_total"), 3);
    assert.ok(m.get("outbox_dispatch_rounds_total")! >= 1, "the rounds that read them are counted");
    assert.equal(m.get('outbox_deliveries_total{outcome="delivered",subscription="m_ok"}'), 3);
    assert.equal(m.get('outbox_deliveries_total{outcome="retry",subscription="m_flaky"}'), 3);
    assert.equal(m.get('outbox_deliveries_total{outcome="delivered",subscription="m_flaky"}'), 3);
    assert.equal(m.get('outbox_deliveries_total{outcome="dead",subscription="m_dead"}'), 3);
    assert.equal(m.get('outbox_delivery_latency_seconds_count{subscription="m_ok"}'), 3);
    assert.equal(m.get('outbox_delivery_latency_seconds_bucket{le="+Inf",subscription="m_ok"}'), 3);
    const latencySum = m.get('outbox_delivery_latency_seconds_sum{subscription="m_ok"}')!;
    assert.ok(latencySum > 0 && latencySum < 60, `latency sum ${latencySum}`);
    assert.equal(m.get('outbox_deliveries{status="dead",subscription="m_dead"}'), 3);
    assert.equal(m.get('outbox_deliveries{status="pending",subscription="m_elsewhere"}'), 3);
    assert.ok(m.get('outbox_oldest_pending_age_seconds{subscription="m_elsewhere"}')! >= 0);
    assert.equal(m.get('outbox_oldest_pending_age_seconds{subscription="m_ok"}'), undefined, "nothing pending, no age");
    assert.equal(m.get("outbox_dispatch_lag_seconds"), 0);
    assert.equal(m.get("outbox_events_undispatched"), 0);
    assert.ok((m.get("process_resident_memory_bytes") ?? 0) > 0, "process metrics too");
    assert.match((await get(worker.httpPort, "/metrics")).body, /outbox_deliveries_total\{subscription="m_ok",outcome="delivered",worker="[^"]+"\} 3/);
  } finally {
    await worker.stop();
    await outbox.close();
  }
});

test("/healthz is 200 with migrations current, 503 with the reason when one is missing, degraded (200) with an unhealthy capture; other paths 404", async () => {
  const outbox = createOutbox({ connectionString: db.url, worker: { pollIntervalMs: 200, httpPort: 0 } });
  const worker = await outbox.start();
  const [newest] = await db.sql<{ id: number; hash: string; created_at: string }[]>`
    select id, hash, created_at::text from outbox._migrations order by created_at desc limit 1`;
  try {
    const ok = await get(worker.httpPort!, "/healthz");
    assert.equal(ok.status, 200, ok.body);
    assert.equal(ok.type, "application/json");
    const report = JSON.parse(ok.body) as { status: string; migrations: { current: boolean; applied: number; expected: number } };
    assert.equal(report.status, "ok");
    assert.equal(report.migrations.applied, report.migrations.expected);

    // As after deploying a newer pg-outbox without running its migrations.
    await db.sql`delete from outbox._migrations where id = ${newest!.id}`;
    const behind = await get(worker.httpPort!, "/healthz");
    assert.equal(behind.status, 503);
    const reason = (JSON.parse(behind.body) as { reason: string }).reason;
    assert.match(reason, /^migrations are behind \(\d+ applied, this version ships \d+\): run `outbox migrate`$/);

    assert.equal((await get(worker.httpPort!, "/nope")).status, 404);

    // Guarantee 8: a captured table whose trigger is disabled shows in the health check,
    // without making the worker unready.
    await db.sql`insert into outbox._migrations (id, hash, created_at) values (${newest!.id}, ${newest!.hash}, ${newest!.created_at}::bigint)`;
    await db.sql`create table m_health (id int primary key)`;
    await db.sql`select outbox.enable_capture('m_health')`;
    await db.sql`alter table m_health disable trigger user`;
    const degraded = await get(worker.httpPort!, "/healthz");
    assert.equal(degraded.status, 200, degraded.body);
    const report2 = JSON.parse(degraded.body) as { status: string; reason: string; captures: Array<{ table: string; health: string }> };
    assert.equal(report2.status, "degraded");
    assert.match(report2.reason, /^capture is not healthy on public\.m_health: see outbox capture list$/);
    assert.deepEqual(report2.captures.map((c) => c.table), ["public.m_health"]);
    assert.notEqual(report2.captures[0]!.health, "ok");
    await db.sql`drop table m_health`;
  } finally {
    await db.sql`insert into outbox._migrations (id, hash, created_at) values (${newest!.id}, ${newest!.hash}, ${newest!.created_at}::bigint)
                 on conflict do nothing`;
    await worker.stop();
    await outbox.close();
  }
});

test("/healthz is 503 and /metrics reports the database down while the database refuses connections; both recover after", async () => {
  const own = await createTestDatabase();
  const outbox = createOutbox({ connectionString: own.url, worker: { pollIntervalMs: 200, httpPort: 0 } });
  const worker = await outbox.start();
  // On the server's own database: a database cannot refuse connections to itself.
  const admin = postgres(process.env.DATABASE_URL!, { max: 1, onnotice: () => undefined });
  try {
    assert.equal((await get(worker.httpPort!, "/healthz")).status, 200);
    // What the health check sees when its database goes away: its connection is cut and no new
    // one is accepted. (The worker's other sessions are spared, so it can stop as usual.)
    await admin.unsafe(`alter database ${own.name} allow_connections false`);
    await admin`select pg_terminate_backend(pid) from pg_stat_activity where datname = ${own.name} and application_name = 'pg-outbox http'`;
    const gone = await get(worker.httpPort!, "/healthz");
    assert.equal(gone.status, 503);
    assert.match((JSON.parse(gone.body) as { reason: string }).reason, /^database unreachable: /);
    assert.equal((await scrape(worker.httpPort!)).get("outbox_database_up"), 0);

    await admin.unsafe(`alter database ${own.name} allow_connections true`);
    await waitFor(async () => (await get(worker.httpPort!, "/healthz")).status === 200, "/healthz to recover");
    assert.equal((await scrape(worker.httpPort!)).get("outbox_database_up"), 1);
  } finally {
    await admin.unsafe(`alter database ${own.name} allow_connections true`).catch(() => undefined);
    await admin.end();
    await worker.stop();
    await outbox.close();
    await dropTestDatabase(own);
  }
});

test("outbox worker serves /healthz on OUTBOX_HTTP_PORT and says which port it bound", async () => {
  const child = startOutboxCommand(["worker"], { DATABASE_URL: db.url, OUTBOX_HTTP_PORT: "0", OUTBOX_HTTP_HOST: "127.0.0.1", OUTBOX_LOG_LEVEL: "info" });
  try {
    const port = await waitFor(async () => {
      const line = child.stdout().split("\n").find((l) => l.includes("serving /healthz and /metrics"));
      return line ? (JSON.parse(line) as { port: number }).port : undefined;
    }, "the worker to log its port", 30_000);
    const health = await get(port, "/healthz");
    assert.equal(health.status, 200, health.body);
    assert.match((await get(port, "/metrics")).body, /^# HELP /m);
  } finally {
    child.child.kill("SIGTERM");
    const timer = setTimeout(() => child.child.kill("SIGKILL"), 30_000);
    assert.equal(await child.exited, 0, `SIGTERM drains and exits 0: ${child.stderr()}`);
    clearTimeout(timer);
  }
});

test("a bad OUTBOX_HTTP_PORT or duration is a configuration error (exit 3) naming the variable", async () => {
  const port = startOutboxCommand(["worker"], { DATABASE_URL: db.url, OUTBOX_HTTP_PORT: "http" });
  assert.equal(await port.exited, 3);
  assert.match(port.stderr(), /OUTBOX_HTTP_PORT must be a port from 0 to 65535, or off/);
  const lease = startOutboxCommand(["worker"], { DATABASE_URL: db.url, OUTBOX_LEASE: "forever" });
  assert.equal(await lease.exited, 3);
  assert.match(lease.stderr(), /OUTBOX_LEASE must be a duration such as 500ms, 30s, 15m, 1h, 7d or 1h30m/);
});

test("lone writes to an ordered subscription cost one dispatch round each: the claims after a 'deliver' wake-up or a recorded outcome do not read events again", async () => {
  await capturedTable(db.sql, "m_ordered");
  const outbox = createOutbox({ connectionString: db.url, worker: { pollIntervalMs: 60_000, leaseMs: 2000, httpPort: 0, httpHost: "127.0.0.1" } });
  const delivered: number[] = [];
  // Ordered: dispatch cannot claim these for the worker; it leaves them pending, sends
  // 'deliver', and each outcome unblocks the key's next event, to be claimed.
  outbox.handle("m_ordered_h", "public.m_ordered.*", (event) => void delivered.push(Number((event.key as { id: number }).id)), { ordered: true });
  const worker = await outbox.start();
  try {
    await waitFor(() => workerMarkedIdle(db.sql, worker.id), "the worker to mark itself idle");
    const rounds = async () => (await scrape(worker.httpPort!)).get("outbox_dispatch_rounds_total") ?? 0;
    const before = await rounds();
    const writes = 5;
    for (let id = 1; id <= writes; id++) {
      await db.sql`insert into m_ordered (id) values (${id})`;
      await waitFor(async () => (await statusCounts(db.sql, "m_ordered_h")).delivered === id, `lone write ${id} delivered and recorded`, 5000);
    }
    assert.deepEqual(delivered, [1, 2, 3, 4, 5]);
    // One round per write reads it; a round for each claim besides (about four per write, as
    // it was) would read nothing. Slack for a write that lands in a round already running.
    const used = (await rounds()) - before;
    assert.ok(used <= 2 * writes, `${used} dispatch rounds for ${writes} lone writes`);
  } finally {
    await worker.stop();
    await outbox.close();
  }
});
