/**
 * DESIGN.md guarantees 2 and 7 across process boundaries: kill -9 of a worker mid-batch loses
 * nothing (leases expire, another worker takes over), a killed dispatcher is replaced within
 * seconds (session advisory lock), SIGTERM drains in-flight deliveries, and a worker survives
 * the loss of its connections without a restart.
 */
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { readdirSync, readFileSync, readlinkSync } from "node:fs";
import { createInterface } from "node:readline";
import { after, test } from "node:test";
import postgres, { type Sql } from "postgres";
import { createOutbox, type Outbox } from "../src/outbox.js";
import type { OutboxWorker } from "../src/worker/worker.js";
import { HARNESS_APPLICATION_NAME, useTestDatabase, waitFor } from "./harness.js";

// ---------------------------------------------------------------------------------------------
// Cleanup, registered before useTestDatabase's hooks so it runs before the database is dropped.

const children = new Set<ChildProcess>();
const workers: OutboxWorker[] = [];
const outboxes: Outbox[] = [];
const clients: Sql[] = [];
after(async () => {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  }
  for (const w of workers) await w.stop().catch(() => undefined);
  for (const o of outboxes) await o.close().catch(() => undefined);
  await Promise.all(clients.map((c) => c.end({ timeout: 5 }).catch(() => undefined)));
});

const db = useTestDatabase();

// ---------------------------------------------------------------------------------------------
// Worker processes (test/fixtures/workerProcess.ts).

interface WorkerChild {
  proc: ChildProcess;
  pid: number;
  /** `outbox._workers.id` of its worker. */
  workerId: string;
  /** Stdout lines so far. */
  lines: string[];
  stderr: string[];
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

async function spawnWorker(subscription: string, pattern: string, env: Record<string, string> = {}): Promise<WorkerChild> {
  const proc = spawn(process.execPath, ["--import", "tsx", "test/fixtures/workerProcess.ts", subscription, pattern], {
    env: { ...process.env, DATABASE_URL: db.url, POLL_MS: "200", LEASE_MS: "2000", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.add(proc);
  const lines: string[] = [];
  const stderr: string[] = [];
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    proc.on("exit", (code, signal) => resolve({ code, signal })),
  );
  createInterface({ input: proc.stderr! }).on("line", (line) => stderr.push(line));
  let workerId = "";
  const ready = new Promise<void>((resolve, reject) => {
    createInterface({ input: proc.stdout! }).on("line", (line) => {
      lines.push(line);
      if (line.startsWith("worker-id ")) workerId = line.slice("worker-id ".length);
      if (line === "ready") resolve();
    });
    void exited.then(({ code, signal }) =>
      reject(new Error(`worker process exited before ready (code ${code}, signal ${signal}): ${stderr.join("\n")}`)),
    );
  });
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    ready,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`worker process not ready after 30 s: ${stderr.join("\n")}`)), 30_000);
    }),
  ]).finally(() => clearTimeout(timer));
  return { proc, pid: proc.pid!, workerId, lines, stderr, exited };
}

/** The local TCP ports of a process's sockets (Linux /proc), to tell whose connection a backend serves. */
function localPortsOf(pid: number): Set<number> {
  const inodes = new Set<string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const target = readlinkSync(`/proc/${pid}/fd/${fd}`);
      const match = /^socket:\[(\d+)\]$/.exec(target);
      if (match) inodes.add(match[1]!);
    } catch {
      // closed meanwhile
    }
  }
  const ports = new Set<number>();
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text = "";
    try {
      text = readFileSync(file, "utf8");
    } catch {
      continue;
    }
    for (const line of text.split("\n").slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols.length < 10) continue;
      if (inodes.has(cols[9]!)) ports.add(parseInt(cols[1]!.split(":").at(-1)!, 16));
    }
  }
  return ports;
}

/** The client port of the backend holding the dispatcher lock in this database, if any. */
async function dispatcherPort(): Promise<number | undefined> {
  const rows = await db.sql<{ port: number }[]>`
    select a.client_port as port
    from pg_locks l
    join pg_stat_activity a on a.pid = l.pid
    where l.locktype = 'advisory' and l.granted
      and l.database = (select oid from pg_database where datname = current_database())
      and ((l.classid::bigint << 32) | l.objid::bigint) = 7320110003
      and a.application_name = 'pg-outbox dispatcher'`;
  return rows[0]?.port;
}

/** Which of `candidates` is the dispatcher now (holds the advisory lock). */
async function dispatcherAmong(candidates: WorkerChild[]): Promise<WorkerChild | undefined> {
  const port = await dispatcherPort();
  if (port === undefined) return undefined;
  return candidates.find((c) => c.proc.exitCode === null && c.proc.signalCode === null && localPortsOf(c.pid).has(port));
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

async function capturedTable(table: string): Promise<void> {
  await db.sql.unsafe(`create table ${table} (id int primary key, note text)`);
  await db.sql`select outbox.enable_capture(${table}, operations => '{insert}')`;
}

async function receivedTable(table: string): Promise<void> {
  await db.sql.unsafe(`create table ${table} (event_id uuid not null, worker_pid int not null, received_at timestamptz not null)`);
}

interface DeliveryCounts {
  total: number;
  delivered: number;
  delivering: number;
  other: number;
}

async function deliveryCounts(subscription: string, sql: Sql = db.sql): Promise<DeliveryCounts> {
  const [row] = await sql<DeliveryCounts[]>`
    select count(*)::int as total,
           count(*) filter (where status = 'delivered')::int as delivered,
           count(*) filter (where status = 'delivering')::int as delivering,
           count(*) filter (where status not in ('delivered', 'delivering'))::int as other
    from outbox.deliveries where subscription = ${subscription}`;
  return row!;
}

/** Event ids of a captured table that have no row in the received table yet. */
async function undelivered(table: string, received: string): Promise<string[]> {
  const rows = await db.sql.unsafe<{ id: string }[]>(`
    select e.id::text from outbox.events e
    where e.table_name = '${table}' and not exists (select from ${received} r where r.event_id = e.id)`);
  return rows.map((r) => r.id);
}

async function exitWithin(child: WorkerChild, ms: number) {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    child.exited,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`worker process ${child.pid} did not exit within ${ms} ms; stdout tail: ${child.lines.slice(-5).join(" | ")}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

// ---------------------------------------------------------------------------------------------

test("kill -9 of a worker mid-batch loses nothing: another worker delivers every event once the leases expire", async (t) => {
  await capturedTable("crash_events");
  await receivedTable("crash_received");
  const env = { RECEIVED_TABLE: "crash_received", LEASE_MS: "2000" };
  const a = await spawnWorker("crash", "public.crash_events.insert", { ...env, HANDLER_DELAY_MS: "100", HANDLER_JITTER_MS: "1200" });

  const N = 40;
  for (let i = 0; i < N; i += 10) {
    await db.sql`insert into crash_events (id) select g from generate_series(${i + 1}::int, ${i + 10}::int) g`;
  }
  // Kill once some events were handled and others are in flight.
  const atKill = await waitFor(
    async () => {
      const [{ n }] = await db.sql<{ n: number }[]>`select count(*)::int as n from crash_received`;
      const counts = await deliveryCounts("crash");
      return n >= 5 && counts.delivering > 0 ? { received: n, ...counts } : undefined;
    },
    "worker A mid-batch (some events received, some deliveries delivering)",
    20_000,
  );
  a.proc.kill("SIGKILL");
  const { signal } = await exitWithin(a, 5_000);
  assert.equal(signal, "SIGKILL");
  const inFlightAtKill = await db.sql<{ event_id: string }[]>`
    select event_id::text from outbox.deliveries where subscription = 'crash' and status = 'delivering'`;
  t.diagnostic(`killed A with ${atKill.received} received, ${inFlightAtKill.length} deliveries left delivering`);
  assert.ok(inFlightAtKill.length > 0, "the kill left deliveries in flight");

  const killedAt = Date.now();
  const b = await spawnWorker("crash", "public.crash_events.insert", env);
  await waitFor(
    async () => {
      const counts = await deliveryCounts("crash");
      return counts.total === N && counts.delivered === N && (await undelivered("crash_events", "crash_received")).length === 0;
    },
    "every event received and every delivery delivered after worker B started",
    30_000,
  ).catch(async (error: Error) => {
    throw new Error(`${error.message}: ${JSON.stringify(await deliveryCounts("crash"))}, ${(await undelivered("crash_events", "crash_received")).length} events never received`);
  });
  t.diagnostic(`worker B finished the batch ${Date.now() - killedAt} ms after the kill`);

  const counts = await deliveryCounts("crash");
  assert.deepEqual(counts, { total: N, delivered: N, delivering: 0, other: 0 }, "nothing stays delivering");
  const [{ distinct }] = await db.sql<{ distinct: number }[]>`select count(distinct event_id)::int as distinct from crash_received`;
  assert.equal(distinct, N, "every event was received (duplicates allowed)");
  const takenOver = await db.sql<{ event_id: string; attempts: number }[]>`
    select event_id::text, attempts from outbox.deliveries
    where subscription = 'crash' and event_id = any(${inFlightAtKill.map((r) => r.event_id)}::uuid[])`;
  for (const row of takenOver) assert.ok(row.attempts >= 2, `event ${row.event_id}, in flight at the kill, was attempted again`);
  const [{ byB }] = await db.sql<{ byB: number }[]>`
    select count(*)::int as "byB" from crash_received where worker_pid = ${b.pid}`;
  assert.ok(byB > 0, "worker B delivered the events A was killed with");
  b.proc.kill("SIGTERM");
  assert.deepEqual(await exitWithin(b, 15_000), { code: 0, signal: null });
});

test("kill -9 while a dispatch round waits for its handlers: nothing of the round was written, and another worker delivers every event without waiting for a lease", async (t) => {
  await capturedTable("settle_events");
  await receivedTable("settle_received");
  // A waits up to a second for handlers that never return in time; the leases (30 s) are far
  // longer than the test waits for B, so B can only get the events by reading them again.
  const env = { RECEIVED_TABLE: "settle_received", LEASE_MS: "30000" };
  const a = await spawnWorker("settle", "public.settle_events.insert", { ...env, SETTLE_WITHIN_MS: "1000", HANDLER_DELAY_MS: "60000" });
  const N = 5;
  const [{ lastId }] = await db.sql<{ lastId: string }[]>`select last_id::text as "lastId" from outbox._dispatch_state`;
  await db.sql`insert into settle_events (id) select g from generate_series(1, ${N}::int) g`;
  await waitFor(async () => a.lines.filter((l) => l.startsWith("begin ")).length === N, "worker A's handler started every event", 10_000);
  // Frozen, so that its wait cannot end and commit the round while the test looks: the round
  // is still open, and its deliveries and its cursor are not visible to anyone.
  a.proc.kill("SIGSTOP");
  const counts = await deliveryCounts("settle");
  const [{ lastIdNow }] = await db.sql<{ lastIdNow: string }[]>`select last_id::text as "lastIdNow" from outbox._dispatch_state`;
  a.proc.kill("SIGKILL");
  assert.deepEqual(counts, { total: 0, delivered: 0, delivering: 0, other: 0 }, "the round had not committed when A was killed");
  assert.equal(lastIdNow, lastId, "the cursor had not moved when A was killed");
  await exitWithin(a, 5_000);

  const killedAt = Date.now();
  const b = await spawnWorker("settle", "public.settle_events.insert", env);
  await waitFor(
    async () => (await deliveryCounts("settle")).delivered === N && (await undelivered("settle_events", "settle_received")).length === 0,
    "every event received and delivered by worker B",
    10_000,
  );
  t.diagnostic(`worker B delivered the events ${Date.now() - killedAt} ms after the kill`);
  const rows = await db.sql<{ attempts: number }[]>`select attempts from outbox.deliveries where subscription = 'settle'`;
  assert.deepEqual(rows.map((r) => r.attempts), Array(N).fill(1), "each delivery was written once, by B's round, on its first attempt");
  const [{ byB }] = await db.sql<{ byB: number }[]>`select count(distinct event_id)::int as "byB" from settle_received where worker_pid = ${b.pid}`;
  assert.equal(byB, N, "worker B handled every event");
  b.proc.kill("SIGTERM");
  assert.deepEqual(await exitWithin(b, 15_000), { code: 0, signal: null });
});

test("a killed dispatcher is replaced within seconds: new events keep being delivered", async (t) => {
  await capturedTable("disp_events");
  await receivedTable("disp_received");
  const env = { RECEIVED_TABLE: "disp_received" };
  const pattern = "public.disp_events.insert";
  const running = [await spawnWorker("disp", pattern, env), await spawnWorker("disp", pattern, env)];

  let nextId = 1;
  const deliverNewEvents = async (what: string) => {
    const ids = [nextId++, nextId++, nextId++];
    const start = Date.now();
    for (const id of ids) await db.sql`insert into disp_events (id) values (${id})`;
    await waitFor(async () => (await undelivered("disp_events", "disp_received")).length === 0, what, 15_000);
    return Date.now() - start;
  };
  await deliverNewEvents("events with two workers running");

  for (const round of [1, 2]) {
    const dispatcher = await waitFor(() => dispatcherAmong(running), "a worker process holding the dispatcher lock", 10_000);
    dispatcher.proc.kill("SIGKILL");
    await exitWithin(dispatcher, 5_000);
    running.splice(running.indexOf(dispatcher), 1);
    const elapsed = await deliverNewEvents(`events after the dispatcher (pid ${dispatcher.pid}) was killed`);
    t.diagnostic(`round ${round}: events written after killing the dispatcher were delivered in ${elapsed} ms`);
    assert.ok(elapsed < 5_000, `delivered within a few seconds of the kill (${elapsed} ms)`);
    const successor = await dispatcherAmong(running);
    assert.ok(successor, "a surviving worker process took the dispatcher role");
    // Kill each in turn: a fresh process joins, and the next round kills the new dispatcher.
    if (round === 1) running.push(await spawnWorker("disp", pattern, env));
  }
  // A killed dispatcher may have run a handler without recording its outcome: that delivery
  // stays delivering until its lease (2 s here) expires and a survivor takes it over.
  await waitFor(async () => (await deliveryCounts("disp")).delivering === 0, "nothing left delivering once leases expire", 15_000);
  for (const child of running) child.proc.kill("SIGTERM");
  for (const child of running) assert.deepEqual(await exitWithin(child, 15_000), { code: 0, signal: null });
});

test("SIGTERM drains: the process exits 0 within the drain time and the delivery in flight ends delivered", async () => {
  await capturedTable("drain_events");
  await receivedTable("drain_received");
  const a = await spawnWorker("drain", "public.drain_events.insert", {
    RECEIVED_TABLE: "drain_received",
    HANDLER_DELAY_MS: "2000",
    DRAIN_MS: "8000",
    LEASE_MS: "30000",
  });
  await db.sql`insert into drain_events (id) values (1)`;
  const [{ id: eventId }] = await db.sql<{ id: string }[]>`select id::text from outbox.events where table_name = 'drain_events'`;
  await waitFor(async () => a.lines.some((l) => l.startsWith(`begin ${eventId}`)), "the handler to start on the event", 10_000);

  const signalledAt = Date.now();
  a.proc.kill("SIGTERM");
  const exit = await exitWithin(a, 12_000);
  const took = Date.now() - signalledAt;
  assert.deepEqual(exit, { code: 0, signal: null }, `exit code 0 (stderr: ${a.stderr.join("\n")})`);
  assert.ok(took < 8_000, `exited within the drain time (${took} ms)`);
  assert.ok(a.lines.includes(`end ${eventId}`) && a.lines.includes("stopped"), "the handler finished before the process stopped");
  const [delivery] = await db.sql<{ status: string; attempts: number; locked_by: string | null }[]>`
    select status, attempts, locked_by from outbox.deliveries where subscription = 'drain'`;
  assert.deepEqual(delivery, { status: "delivered", attempts: 1, locked_by: null }, "the in-flight delivery was recorded as delivered, not left delivering");
  const received = await db.sql`select worker_pid from drain_received`;
  assert.deepEqual(received.map((r) => r.worker_pid), [a.pid]);
  assert.equal((await db.sql`select 1 from outbox._workers where id = ${a.workerId}`).length, 0, "the stopped worker deregistered");
});

test("SIGTERM while a dispatch round is claiming deliveries for the stopping worker leaves nothing delivering", async () => {
  await capturedTable("drain2_events");
  await receivedTable("drain2_received");
  const a = await spawnWorker("drain2", "public.drain2_events.insert", {
    RECEIVED_TABLE: "drain2_received",
    HANDLER_DELAY_MS: "300",
    DRAIN_MS: "8000",
    LEASE_MS: "30000",
  });
  // Warm up: A is the dispatcher and delivering.
  await db.sql`insert into drain2_events (id) values (1)`;
  await waitFor(async () => (await undelivered("drain2_events", "drain2_received")).length === 0, "the warm-up event", 10_000);

  // Hold the next dispatch round inside its transaction: a row lock on the dispatch state
  // makes it wait after its snapshot (which sees the new events) and after it was asked to
  // claim the new deliveries for A. Nothing else the worker does touches that row.
  const locker = await db.sql.reserve();
  let open = false;
  try {
    await locker`begin`;
    open = true;
    await locker`select 1 from outbox._dispatch_state where id = 1 for update`;
    await db.sql`insert into drain2_events (id) select generate_series(2, 6)`;
    await waitFor(
      async () =>
        (await db.sql`
          select 1 from pg_stat_activity
          where datname = current_database() and application_name = 'pg-outbox dispatcher' and wait_event_type = 'Lock'`).length > 0,
      "A's dispatch round waiting on the lock",
      10_000,
    );
    a.proc.kill("SIGTERM");
    // The process has the signal and is stopping: its round still waits on the lock.
    await waitFor(
      async () => a.lines.includes("stopping"),
      "A to begin stopping",
      10_000,
    );
    await locker`commit`;
    open = false;
  } finally {
    if (open) await locker`rollback`.catch(() => undefined);
    locker.release();
  }
  const exit = await exitWithin(a, 15_000);
  assert.deepEqual(exit, { code: 0, signal: null }, `exit code 0 (stderr: ${a.stderr.join("\n")})`);
  const stuck = await db.sql<{ id: string; status: string; locked_by: string }[]>`
    select id::text, status, locked_by from outbox.deliveries where subscription = 'drain2' and status = 'delivering'`;
  const [{ n: handled }] = await db.sql<{ n: number }[]>`select count(*)::int as n from drain2_received`;
  assert.deepEqual(
    [...stuck],
    [],
    "a graceful stop leaves no delivery `delivering` (deliveries claimed during the stop are either finished and recorded, or never started); " +
      `${handled - 1} of the 5 events reached the handler; worker output after SIGTERM: ${a.lines.slice(-8).join(" | ")}; stderr: ${a.stderr.slice(-3).join(" | ")}`,
  );
});

test("connection loss: after its backends are terminated the worker process keeps delivering without a restart", async (t) => {
  await capturedTable("conn_events");
  await receivedTable("conn_received");
  const a = await spawnWorker("connloss", "public.conn_events.insert", { RECEIVED_TABLE: "conn_received" });
  // A client of the test's own, excluded from the terminations below.
  const mine = postgres(db.url, { max: 1, onnotice: () => undefined, connection: { application_name: "guarantee-test" } });
  clients.push(mine);
  let nextId = 1;
  const writeAndAwait = async (what: string) => {
    for (let i = 0; i < 3; i++) await mine`insert into conn_events (id) values (${nextId++})`;
    const start = Date.now();
    await waitFor(async () => (await undelivered("conn_events", "conn_received")).length === 0, what, 15_000);
    return Date.now() - start;
  };
  await writeAndAwait("events before the connections are cut");
  const [{ n: cut }] = await mine<{ n: number }[]>`
    select count(pg_terminate_backend(pid))::int as n from pg_stat_activity
    where datname = current_database() and pid <> pg_backend_pid() and application_name like 'pg-outbox%'`;
  assert.ok(cut >= 2, `terminated the worker's own backends (${cut})`);
  const first = await writeAndAwait("events after the worker's pg-outbox connections were terminated");
  const [{ n: cutAll }] = await mine<{ n: number }[]>`
    select count(pg_terminate_backend(pid))::int as n from pg_stat_activity
    where datname = current_database() and pid <> pg_backend_pid()
      and application_name not in ('guarantee-test', ${HARNESS_APPLICATION_NAME}) and backend_type = 'client backend'`;
  const second = await writeAndAwait("events after every other connection to the database was terminated");
  // Again, right after writes, while connections are being re-established: a backend
  // terminated during postgres.js's connection start-up used to surface as an unhandled
  // rejection, which ends the process (the fixture installs no handler for them).
  for (let round = 0; round < 4; round++) {
    await mine`insert into conn_events (id) values (${nextId++})`;
    await mine`
      select pg_terminate_backend(pid) from pg_stat_activity
      where datname = current_database() and pid <> pg_backend_pid()
        and application_name not in ('guarantee-test', ${HARNESS_APPLICATION_NAME}) and backend_type = 'client backend'`;
    await writeAndAwait(`events after cut ${round + 3}`);
  }
  t.diagnostic(`terminated ${cut} then ${cutAll} backends, then everything 4 more times; new events delivered ${first} ms and ${second} ms later`);
  assert.equal(a.proc.exitCode, null, `the worker process is still running (stderr: ${a.stderr.slice(-3).join(" | ")})`);
  assert.deepEqual(a.stderr.filter((line) => /unhandled/i.test(line)), [], "no unhandled rejection");
  a.proc.kill("SIGTERM");
  assert.deepEqual(await exitWithin(a, 10_000), { code: 0, signal: null });
});
