/**
 * The delivery part of `npm run bench -- --part delivery`: how fast a committed write reaches a
 * handler, against graphile-worker's own job hand-off in the same run on the same server.
 *
 * (a) latency: single-row autocommit INSERT into a captured table, one every `intervalMs`;
 *     t0 right before sending the INSERT, t1 in the handler (outbox.handle + start() in this
 *     process). Baseline: `select graphile_worker.add_job(...)` to a noop task starting
 *     (run(), concurrency 1, default pollInterval).
 * (b) throughput: `events` rows inserted by two writers as statements of `batch` rows while
 *     the worker runs, first insert until every outcome is recorded in outbox.deliveries. Baseline: as many pre-enqueued
 *     graphile-worker noop jobs (add_jobs) run with its fastest settings (localQueue, batched
 *     completion; the best of concurrency 2, 4 and 10), run() until the last job is deleted.
 * (c) fan-out: `fanEvents` rows to a table ten handler subscriptions match, first insert until
 *     all ten times as many deliveries are recorded (deliveries/s).
 * (d) latency under load: a steady stream of `loadRate` single-row INSERTs per second keeps the
 *     worker busy (bench/loadLatency.ts); no goal, no baseline.
 *
 * Uses its own database `outbox_bench_delivery` (dropped and recreated).
 */
import { Logger, run, type Runner } from "graphile-worker";
import postgres, { type Sql } from "postgres";
import { migrate } from "../src/db/migrate.js";
import { createOutbox } from "../src/outbox.js";
import { measureUnderLoad, workerCpuText, type LoadLatency } from "./loadLatency.js";
import { quantile } from "./quantile.js";
import { waitFor } from "./waitFor.js";

export const DELIVERY_DATABASE = "outbox_bench_delivery";

export interface DeliveryOptions {
  /** Server URL (any database); the benchmark database is created next to it. */
  serverUrl: string;
  samples: number;
  warmup: number;
  intervalMs: number;
  events: number;
  batch: number;
  /** Events of the fan-out case (each delivered to 10 subscriptions). */
  fanEvents: number;
  /** Rows per second of the latency-under-load case, for `loadSeconds`; 0 skips it (it needs pgbench). */
  loadRate: number;
  loadSeconds: number;
  log: (line: string) => void;
}

/** Subscriptions of the fan-out case. */
export const FAN_OUT = 10;

export interface Latency {
  samples: number;
  p50: number;
  p99: number;
  mean: number;
  max: number;
  /** Round trip of the INSERT / add_job statement itself (t0 to its reply). */
  statementP50: number;
  statementP99: number;
}

export interface DeliveryReport {
  latency: { outbox: Latency; graphile: Latency; ratioP50: number; ratioP99: number };
  throughput: {
    outbox: { events: number; seconds: number; perSecond: number; insertSeconds: number };
    graphile: { jobs: number; seconds: number; perSecond: number; enqueueSeconds: number; localQueue: number; concurrency: number; tried: Array<{ concurrency: number; perSecond: number }> };
    ratio: number;
  };
  fanOut: { subscriptions: number; events: number; deliveries: number; seconds: number; perSecond: number };
  underLoad: LoadLatency | null;
}

const silent = new Logger(() => () => undefined);
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, Math.max(0, ms)));

function withDatabase(url: string, database: string): string {
  const parsed = new URL(url);
  parsed.pathname = `/${database}`;
  return parsed.toString();
}

/**
 * Sends `warmup + samples` statements, one every `intervalMs`, each tagged with its index n;
 * `arrived[n]` is filled in by the consumer. Returns latencies and statement round trips of
 * the non-warm-up samples.
 */
async function paced(
  opts: DeliveryOptions, arrived: number[], send: (n: number) => Promise<unknown>, what: string,
): Promise<Latency> {
  const total = opts.warmup + opts.samples;
  const t0: number[] = [];
  const rtt: number[] = [];
  const start = performance.now();
  for (let n = 0; n < total; n++) {
    await sleep(start + n * opts.intervalMs - performance.now());
    t0[n] = performance.now();
    await send(n);
    rtt[n] = performance.now() - t0[n]!;
  }
  await waitFor(() => arrived.filter((x) => x !== undefined).length >= total, 30_000, `${what} deliveries`);
  const lat: number[] = [];
  const stmt: number[] = [];
  for (let n = opts.warmup; n < total; n++) {
    lat.push(arrived[n]! - t0[n]!);
    stmt.push(rtt[n]!);
  }
  const result: Latency = {
    samples: lat.length,
    p50: quantile(lat, 0.5),
    p99: quantile(lat, 0.99),
    mean: lat.reduce((a, b) => a + b, 0) / lat.length,
    max: Math.max(...lat),
    statementP50: quantile(stmt, 0.5),
    statementP99: quantile(stmt, 0.99),
  };
  opts.log(`  ${what}: p50 ${result.p50.toFixed(2)} ms, p99 ${result.p99.toFixed(2)} ms (statement p50 ${result.statementP50.toFixed(2)} ms)`);
  return result;
}

/**
 * When every delivery of `subscriptions` is recorded (none pending, retrying or delivering):
 * a throughput figure counts what is durably done, not only handler calls whose outcomes are
 * still in memory. Polls every 10 ms; returns the time it first saw it.
 */
async function recordedAt(sql: Sql, subscriptions: string[]): Promise<number> {
  for (;;) {
    const [{ open }] = await sql<{ open: boolean }[]>`
      select exists (select 1 from outbox.deliveries
                     where subscription = any(${subscriptions}) and status in ('pending', 'retrying', 'delivering')) as open`;
    if (!open) return performance.now();
    await sleep(10);
  }
}

/** Inserts `events` rows into `table` from two writers, `batch` rows per statement. */
async function writeRows(url: string, table: string, events: number, batch: number): Promise<number> {
  const writers = postgres(url, { max: 2, onnotice: () => undefined });
  try {
    await Promise.all([writers`select 1`, writers`select 1`]);
    const start = performance.now();
    let next = 0;
    await Promise.all([0, 1].map(async () => {
      for (let from = next; from < events; from = next) {
        next += batch;
        await writers.unsafe(`insert into ${table} (n, note)
          select g, 'a short note about this order' from generate_series(${from + 1}, ${Math.min(from + batch, events)}) g`);
      }
    }));
    return (performance.now() - start) / 1000;
  } finally {
    await writers.end({ timeout: 5 });
  }
}

async function outboxPart(url: string, sql: Sql, client: Sql, opts: DeliveryOptions) {
  await sql.unsafe(`
    create table bench_latency (id bigserial primary key, n int not null, note text);
    create table bench_tput (id bigserial primary key, n int not null, note text);
    create table bench_fan (id bigserial primary key, n int not null, note text);
    create table bench_load (id bigserial primary key, note text);`);
  await sql`select outbox.enable_capture('bench_latency')`;
  await sql`select outbox.enable_capture('bench_tput')`;
  await sql`select outbox.enable_capture('bench_fan')`;
  await sql`select outbox.enable_capture('bench_load')`;

  const arrived: number[] = [];
  let delivered = 0;
  let lastAt = 0;
  let fanDelivered = 0;
  let fanLastAt = 0;
  const outbox = createOutbox({ connectionString: url });
  outbox.handle("bench_latency_h", "public.bench_latency.insert", (event) => {
    const t1 = performance.now();
    const n = (event.new as { n: number }).n;
    arrived[n] ??= t1;
  });
  outbox.handle("bench_tput_h", "public.bench_tput.insert", () => {
    delivered++;
    lastAt = performance.now();
  });
  const loadLatencies: number[] = [];
  outbox.handle("bench_load_h", "public.bench_load.insert", (event) => {
    loadLatencies.push(Date.now() - Date.parse(event.time));
  });
  for (let i = 0; i < FAN_OUT; i++) {
    outbox.handle(`bench_fan_h${i}`, "public.bench_fan.insert", () => {
      fanDelivered++;
      fanLastAt = performance.now();
    });
  }
  const worker = await outbox.start();
  try {
    await sleep(500); // let the worker settle (subscriptions loaded, idle mark written)
    opts.log(`outbox latency: ${opts.warmup} + ${opts.samples} single-row inserts, one every ${opts.intervalMs} ms`);
    const latency = await paced(opts, arrived, (n) =>
      client`insert into bench_latency (n, note) values (${n}, 'a short note about this order')`, "outbox");

    let underLoad: LoadLatency | null = null;
    if (opts.loadRate > 0) {
      opts.log(`outbox latency under load: ${opts.loadRate} single-row inserts per second for ${opts.loadSeconds} s (pgbench, 4 clients)`);
      underLoad = await measureUnderLoad(url, sql, "bench_load", loadLatencies, opts.loadRate, opts.loadSeconds);
      opts.log(`  outbox: p50 ${underLoad.p50} ms, p99 ${underLoad.p99} ms, max ${underLoad.max} ms${workerCpuText(underLoad.workerCpuPerEvent)}`);
    }

    opts.log(`outbox throughput: ${opts.events} events, two writers inserting statements of ${opts.batch} rows`);
    const start = performance.now();
    const insertSeconds = await writeRows(url, "bench_tput", opts.events, opts.batch);
    await waitFor(() => delivered >= opts.events, 600_000, "outbox throughput deliveries");
    const seconds = ((await recordedAt(sql, ["bench_tput_h"])) - start) / 1000;
    opts.log(`  last handler call after ${((lastAt - start) / 1000).toFixed(2)} s, every outcome recorded after ${seconds.toFixed(2)} s`);
    const throughput = { events: delivered, seconds, perSecond: opts.events / seconds, insertSeconds };
    opts.log(`  outbox: ${Math.round(throughput.perSecond)} events/s (${seconds.toFixed(2)} s; inserts took ${insertSeconds.toFixed(2)} s)`);

    const deliveries = opts.fanEvents * FAN_OUT;
    opts.log(`outbox fan-out: ${opts.fanEvents} events to ${FAN_OUT} handler subscriptions (${deliveries} deliveries)`);
    const fanStart = performance.now();
    await writeRows(url, "bench_fan", opts.fanEvents, opts.batch);
    await waitFor(() => fanDelivered >= deliveries, 600_000, "outbox fan-out deliveries");
    const fanSeconds = ((await recordedAt(sql, Array.from({ length: FAN_OUT }, (_, i) => `bench_fan_h${i}`))) - fanStart) / 1000;
    opts.log(`  last handler call after ${((fanLastAt - fanStart) / 1000).toFixed(2)} s, every outcome recorded after ${fanSeconds.toFixed(2)} s`);
    const fanOut = { subscriptions: FAN_OUT, events: opts.fanEvents, deliveries, seconds: fanSeconds, perSecond: deliveries / fanSeconds };
    opts.log(`  outbox: ${Math.round(fanOut.perSecond)} deliveries/s (${fanSeconds.toFixed(2)} s)`);
    return { latency, throughput, fanOut, underLoad };
  } finally {
    await worker.stop();
    await outbox.close();
  }
}

async function graphilePart(url: string, sql: Sql, client: Sql, opts: DeliveryOptions) {
  const arrived: number[] = [];
  let runner: Runner = await run({
    connectionString: url,
    concurrency: 1,
    noHandleSignals: true,
    logger: silent,
    taskList: {
      bench_noop: async (payload) => {
        const t1 = performance.now();
        arrived[(payload as { n: number }).n] ??= t1;
      },
    },
  });
  let latency: Latency;
  try {
    await sleep(500);
    opts.log(`graphile-worker latency: ${opts.warmup} + ${opts.samples} add_job calls, one every ${opts.intervalMs} ms`);
    latency = await paced(opts, arrived, (n) =>
      client`select graphile_worker.add_job('bench_noop', json_build_object('n', ${n}::int))`, "graphile-worker");
  } finally {
    await runner.stop();
  }

  // Its fastest settings: a local queue and batched completion (both off by default); the
  // best of a few concurrencies, since which wins depends on the machine.
  const localQueue = 500;
  const tried: Array<{ concurrency: number; perSecond: number; seconds: number; enqueueSeconds: number }> = [];
  for (const concurrency of [2, 4, 10]) {
    opts.log(`graphile-worker throughput: ${opts.events} pre-enqueued noop jobs, concurrency ${concurrency}, localQueue ${localQueue}, batched completion`);
    const enqueueStart = performance.now();
    await sql`select graphile_worker.add_jobs(array(
      select json_populate_record(null::graphile_worker.job_spec,
        json_build_object('identifier', 'bench_noop_tput', 'payload', json_build_object('n', g)))
      from generate_series(1, ${opts.events}::int) g))`;
    const enqueueSeconds = (performance.now() - enqueueStart) / 1000;
    let done = 0;
    const start = performance.now();
    runner = await run({
      connectionString: url,
      concurrency,
      maxPoolSize: concurrency + 2,
      noHandleSignals: true,
      logger: silent,
      preset: { worker: { localQueue: { size: localQueue }, completeJobBatchDelay: 0, failJobBatchDelay: 0 } },
      taskList: {
        bench_noop_tput: async () => {
          done++;
        },
      },
    });
    let completedAt = 0;
    try {
      await waitFor(() => done >= opts.events, 600_000, "graphile-worker jobs");
      // As for pg-outbox: until every job's completion is recorded (batched completion
      // deletes them a moment after the task returns).
      for (;;) {
        const [{ open }] = await sql<{ open: boolean }[]>`
          select exists (select 1 from graphile_worker.jobs where task_identifier = 'bench_noop_tput') as open`;
        if (!open) break;
        await sleep(10);
      }
      completedAt = performance.now();
    } finally {
      await runner.stop();
    }
    const seconds = (completedAt - start) / 1000;
    tried.push({ concurrency, perSecond: opts.events / seconds, seconds, enqueueSeconds });
    opts.log(`  graphile-worker: ${Math.round(opts.events / seconds)} jobs/s (${seconds.toFixed(2)} s; enqueue took ${enqueueSeconds.toFixed(2)} s)`);
  }
  const [{ left }] = await sql<{ left: number }[]>`select count(*)::int as left from graphile_worker.jobs where task_identifier like 'bench%'`;
  if (left !== 0) opts.log(`  note: ${left} bench jobs left in graphile_worker.jobs`);
  const best = tried.reduce((a, b) => (b.perSecond > a.perSecond ? b : a));
  const throughput = {
    jobs: opts.events, seconds: best.seconds, perSecond: best.perSecond, enqueueSeconds: best.enqueueSeconds,
    localQueue, concurrency: best.concurrency, tried: tried.map(({ concurrency, perSecond }) => ({ concurrency, perSecond })),
  };
  return { latency, throughput };
}

/** Recreates the database, runs both parts and returns the report. */
export async function runDelivery(opts: DeliveryOptions): Promise<DeliveryReport> {
  const admin = postgres(opts.serverUrl, { max: 1, onnotice: () => undefined });
  await admin.unsafe(`drop database if exists ${DELIVERY_DATABASE} with (force)`);
  await admin.unsafe(`create database ${DELIVERY_DATABASE}`);
  await admin.end();

  const url = withDatabase(opts.serverUrl, DELIVERY_DATABASE);
  const sql = postgres(url, { max: 2, onnotice: () => undefined });
  // The writer: one connection, the application's side (synchronous commit, server default).
  const client = postgres(url, { max: 1, onnotice: () => undefined });
  try {
    await migrate(sql);
    await client`select 1`;
    const ours = await outboxPart(url, sql, client, opts);
    const theirs = await graphilePart(url, sql, client, opts);
    return {
      latency: {
        outbox: ours.latency,
        graphile: theirs.latency,
        ratioP50: ours.latency.p50 / theirs.latency.p50,
        ratioP99: ours.latency.p99 / theirs.latency.p99,
      },
      throughput: {
        outbox: ours.throughput,
        graphile: theirs.throughput,
        ratio: ours.throughput.perSecond / theirs.throughput.perSecond,
      },
      fanOut: ours.fanOut,
      underLoad: ours.underLoad,
    };
  } finally {
    await client.end({ timeout: 5 });
    await sql.end({ timeout: 5 });
  }
}

export function printDelivery(r: DeliveryReport): void {
  const f2 = (n: number) => n.toFixed(2);
  const fi = (n: number) => Math.round(n).toLocaleString("en-US");
  const { outbox: o, graphile: g } = r.latency;
  const rows = [
    ["latency p50 (ms)", f2(o.p50), f2(g.p50), f2(r.latency.ratioP50)],
    ["latency p99 (ms)", f2(o.p99), f2(g.p99), f2(r.latency.ratioP99)],
    ["latency max (ms)", f2(o.max), f2(g.max), f2(o.max / g.max)],
    ["statement p50 (ms)", f2(o.statementP50), f2(g.statementP50), f2(o.statementP50 / g.statementP50)],
    ["statement p99 (ms)", f2(o.statementP99), f2(g.statementP99), f2(o.statementP99 / g.statementP99)],
    ["throughput (/s)", fi(r.throughput.outbox.perSecond), fi(r.throughput.graphile.perSecond), f2(r.throughput.ratio)],
    [`fan-out x${r.fanOut.subscriptions} (deliveries/s)`, fi(r.fanOut.perSecond), "", ""],
  ];
  const header = ["measure", "pg-outbox", "graphile-worker", "ratio"];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ");
  console.log(`\n${line(header)}\n${widths.map((w) => "-".repeat(w)).join("  ")}`);
  for (const row of rows) console.log(line(row));
  console.log(`\nlatency: t0 before sending the autocommit INSERT (pg-outbox) or add_job (graphile-worker), t1 in the handler/task; ${o.samples} samples`);
  console.log("statement: the INSERT / add_job round trip alone; ratio: pg-outbox / graphile-worker (lower is better for latency, higher for throughput)");
  console.log(`throughput: pg-outbox first insert until every outcome is recorded (${fi(r.throughput.outbox.events)} events, two writers); graphile-worker run() until the last job is deleted (pre-enqueued; localQueue ${r.throughput.graphile.localQueue}, batched completion, best of concurrency ${r.throughput.graphile.tried.map((t) => `${t.concurrency}: ${fi(t.perSecond)}/s`).join(", ")})`);
  console.log(`fan-out: ${fi(r.fanOut.events)} events, each delivered to ${r.fanOut.subscriptions} handler subscriptions; first insert until every outcome is recorded`);
  const l = r.underLoad;
  if (l) {
    console.log(`under load (no goal): ${fi(l.rate)} inserts/s for ${l.seconds} s, event time to handler p50 ${l.p50} ms, p99 ${l.p99} ms, max ${l.max} ms${workerCpuText(l.workerCpuPerEvent)}`);
  }
  const goals = [
    [r.latency.outbox.p50 <= 5, `latency p50 ${f2(r.latency.outbox.p50)} ms <= 5 ms`],
    [r.latency.outbox.p99 <= 25, `latency p99 ${f2(r.latency.outbox.p99)} ms <= 25 ms`],
    [r.latency.ratioP50 < 1, `latency p50 below graphile-worker's hand-off (ratio ${f2(r.latency.ratioP50)} < 1)`],
    [r.throughput.outbox.perSecond >= 10_000, `throughput ${fi(r.throughput.outbox.perSecond)} events/s >= 10,000`],
    [r.throughput.ratio >= 0.8, `throughput ratio ${f2(r.throughput.ratio)} >= 0.8 of graphile-worker`],
    [r.fanOut.perSecond >= 20_000, `fan-out ${fi(r.fanOut.perSecond)} deliveries/s >= 20,000`],
  ] as const;
  const missed = goals.filter(([ok]) => !ok).map(([, what]) => what);
  console.log(missed.length ? `GOAL MISSED: ${missed.join("; ")}` : `all goals met: ${goals.map(([, what]) => what).join("; ")}`);
}
