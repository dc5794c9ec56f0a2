/**
 * The webhook part of `npm run bench -- --part webhook`: events per second delivered by one
 * worker to a local HTTP receiver (bench/webhookReceiver.ts, a child process), signed, with
 * batch_size 1 and 100.
 *
 * Each case: a captured table of its own and one webhook subscription on it; `events` rows
 * inserted as statements of 1,000 rows while the worker runs; measured from the first insert
 * to the receiver's last event (the receiver's clock is this machine's). Goals (issue #4):
 * 3,000 events/s unbatched, 20,000 events/s with batch_size 100.
 *
 * Uses its own database `outbox_bench_webhook` (dropped and recreated).
 */
import { fork, type ChildProcess } from "node:child_process";
import postgres, { type Sql } from "postgres";
import { migrate } from "../src/db/migrate.js";
import { createOutbox } from "../src/outbox.js";

export const WEBHOOK_DATABASE = "outbox_bench_webhook";

export interface WebhookBenchOptions {
  /** Server URL (any database); the benchmark database is created next to it. */
  serverUrl: string;
  /** Events of the batch_size 1 case. */
  events: number;
  /** Events of the batch_size 100 case. */
  batchedEvents: number;
  log: (line: string) => void;
}

export interface WebhookCase {
  batchSize: number;
  goal: number;
  events: number;
  requests: number;
  seconds: number;
  perSecond: number;
  insertSeconds: number;
  pass: boolean;
}

export interface WebhookReport {
  cases: WebhookCase[];
}

interface ReceiverState {
  events: number;
  requests: number;
  lastAt: number;
}

const STATEMENT_ROWS = 1000;

function withDatabase(url: string, database: string): string {
  const parsed = new URL(url);
  parsed.pathname = `/${database}`;
  return parsed.toString();
}

async function startReceiver(): Promise<{ child: ChildProcess; port: number; state: ReceiverState }> {
  const child = fork(new URL("./webhookReceiver.ts", import.meta.url), [], { execArgv: ["--import", "tsx"], stdio: "inherit" });
  const state: ReceiverState = { events: 0, requests: 0, lastAt: 0 };
  const port = await new Promise<number>((resolve, reject) => {
    child.once("error", reject);
    child.on("message", (m: Partial<ReceiverState> & { port?: number }) => {
      if (m.port !== undefined) resolve(m.port);
      else Object.assign(state, m);
    });
  });
  return { child, port, state };
}

async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function runCase(url: string, sql: Sql, port: number, state: ReceiverState, child: ChildProcess, batchSize: number, events: number, goal: number, log: (l: string) => void): Promise<WebhookCase> {
  const table = `bench_webhook_b${batchSize}`;
  await sql.unsafe(`create table ${table} (id bigserial primary key, n int not null, note text)`);
  await sql`select outbox.enable_capture(${table})`;
  await sql`
    insert into outbox.subscriptions (name, pattern, kind, config)
    values (${`${table}_hook`}, ${`public.${table}.insert`}, 'webhook', ${JSON.stringify({
      url: `http://127.0.0.1:${port}/b${batchSize}`,
      secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
      batch_size: batchSize,
    })}::text::jsonb)`;
  child.send({ reset: true });
  await until(() => state.events === 0, 5000, "the receiver to reset");

  const outbox = createOutbox({ connectionString: url });
  const worker = await outbox.start();
  try {
    await new Promise((r) => setTimeout(r, 500)); // subscriptions loaded, idle mark written
    log(`webhook batch_size ${batchSize}: ${events} events as statements of ${STATEMENT_ROWS} rows`);
    const start = Date.now();
    for (let i = 0; i < events; i += STATEMENT_ROWS) {
      await sql`insert into ${sql(table)} (n, note)
        select g, 'a short note about this order' from generate_series(${i + 1}::int, ${Math.min(events, i + STATEMENT_ROWS)}::int) g`;
    }
    const insertSeconds = (Date.now() - start) / 1000;
    await until(() => state.events >= events, 600_000, `${events} events at the receiver`);
    const seconds = (state.lastAt - start) / 1000;
    const result: WebhookCase = {
      batchSize, goal, events: state.events, requests: state.requests, seconds,
      perSecond: events / seconds, insertSeconds, pass: events / seconds >= goal,
    };
    log(`  ${Math.round(result.perSecond)} events/s in ${result.requests} requests (${seconds.toFixed(2)} s; inserts took ${insertSeconds.toFixed(2)} s)`);
    return result;
  } finally {
    await worker.stop();
    await outbox.close();
  }
}

/** Recreates the database, runs both cases and returns the report. */
export async function runWebhook(opts: WebhookBenchOptions): Promise<WebhookReport> {
  const admin = postgres(opts.serverUrl, { max: 1, onnotice: () => undefined });
  await admin.unsafe(`drop database if exists ${WEBHOOK_DATABASE} with (force)`);
  await admin.unsafe(`create database ${WEBHOOK_DATABASE}`);
  await admin.end();
  const url = withDatabase(opts.serverUrl, WEBHOOK_DATABASE);
  const sql = postgres(url, { max: 2, onnotice: () => undefined });
  const receiver = await startReceiver();
  try {
    await migrate(sql);
    const cases = [
      await runCase(url, sql, receiver.port, receiver.state, receiver.child, 1, opts.events, 3000, opts.log),
      await runCase(url, sql, receiver.port, receiver.state, receiver.child, 100, opts.batchedEvents, 20_000, opts.log),
    ];
    return { cases };
  } finally {
    receiver.child.send({ stop: true });
    await sql.end({ timeout: 5 });
  }
}

export function printWebhook(report: WebhookReport): void {
  const fi = (n: number) => Math.round(n).toLocaleString("en-US");
  const header = ["case", "events", "requests", "seconds", "events/s", "goal", "result"];
  const rows = report.cases.map((c) => [
    `webhook batch_size ${c.batchSize}`, fi(c.events), fi(c.requests), c.seconds.toFixed(2), fi(c.perSecond), `>= ${fi(c.goal)}`, c.pass ? "pass" : "MISSED",
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ");
  console.log(`\n${line(header)}\n${widths.map((w) => "-".repeat(w)).join("  ")}`);
  for (const r of rows) console.log(line(r));
  console.log("\nfirst insert to the receiver's last event; one worker (default settings), signed requests, receiver in a child process on 127.0.0.1");
  const missed = report.cases.filter((c) => !c.pass);
  console.log(missed.length ? `GOAL MISSED: ${missed.map((c) => `batch_size ${c.batchSize} ${fi(c.perSecond)} < ${fi(c.goal)}`).join("; ")}` : "all goals met");
}
