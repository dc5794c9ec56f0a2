/**
 * DESIGN.md guarantee 2 across a PostgreSQL restart: a worker process keeps delivering after
 * the server it uses stops and starts again (every connection cut, the server unreachable for
 * a while), without a restart of its own, and loses nothing written before or after.
 *
 * The server is an embedded PostgreSQL of this test's own, so that restarting it disturbs no
 * other test.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { after, test } from "node:test";
import postgres from "postgres";
import { startEmbeddedPostgres } from "../src/db/embeddedPostgres.js";
import { migrate } from "../src/db/migrate.js";
import { databaseUrlFor, waitFor } from "./harness.js";

const cleanups: Array<() => Promise<unknown>> = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
});

test("a PostgreSQL restart: the worker process reconnects and delivers everything written before and after, without a restart", async (t) => {
  const server = await startEmbeddedPostgres();
  cleanups.push(() => server.stop());
  const admin = postgres(server.url, { max: 1, onnotice: () => undefined });
  await admin`create database restart_test`;
  await admin.end();
  const url = databaseUrlFor(server.url, "restart_test");
  // The test's client reconnects by itself after the restart, as postgres.js clients do.
  // Two connections: migrate() holds one for its lock.
  const sql = postgres(url, { max: 2, onnotice: () => undefined });
  cleanups.push(() => sql.end({ timeout: 5 }));
  await migrate(sql);
  await sql.unsafe(`
    create table rs_events (id int primary key);
    select outbox.enable_capture('rs_events', operations => '{insert}');
    create table rs_received (event_id uuid not null, worker_pid int not null, received_at timestamptz not null);`);

  const proc = spawn(process.execPath, ["--import", "tsx", "test/fixtures/workerProcess.ts", "rs_sub", "public.rs_events.insert"], {
    env: { ...process.env, DATABASE_URL: url, RECEIVED_TABLE: "rs_received", POLL_MS: "200", LEASE_MS: "2000" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    proc.on("exit", (code, signal) => resolve({ code, signal })),
  );
  cleanups.push(async () => {
    if (proc.exitCode === null) proc.kill("SIGKILL");
  });
  const stderr: string[] = [];
  createInterface({ input: proc.stderr! }).on("line", (line) => stderr.push(line));
  await new Promise<void>((resolve, reject) => {
    createInterface({ input: proc.stdout! }).on("line", (line) => line === "ready" && resolve());
    void exited.then(() => reject(new Error(`worker exited before ready: ${stderr.join("\n")}`)));
  });

  const missing = async () =>
    (await sql<{ n: number }[]>`
      select count(*)::int as n from outbox.events e
      where e.table_name = 'rs_events' and not exists (select from rs_received r where r.event_id = e.id)`)[0]!.n;
  await sql`insert into rs_events select g from generate_series(1, 5) g`;
  await waitFor(async () => (await missing()) === 0, "events before the restart delivered", 15_000);

  const restartedAt = Date.now();
  await server.restart();
  t.diagnostic(`server restarted in ${Date.now() - restartedAt} ms`);
  await sql`insert into rs_events select g from generate_series(6, 10) g`;
  const writtenAt = Date.now();
  await waitFor(async () => (await missing()) === 0, "events after the restart delivered", 30_000);
  t.diagnostic(`events written after the restart were delivered within ${Date.now() - writtenAt} ms`);

  const [{ n }] = await sql<{ n: number }[]>`select count(distinct event_id)::int as n from rs_received`;
  assert.equal(n, 10, "all ten events received");
  assert.equal(proc.exitCode, null, `the worker process is still running (stderr: ${stderr.slice(-3).join(" | ")})`);
  assert.deepEqual(stderr.filter((line) => /unhandled/i.test(line)), [], "no unhandled rejection");
  proc.kill("SIGTERM");
  assert.deepEqual(await exited, { code: 0, signal: null });
});
