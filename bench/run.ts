/**
 * `npm run bench`: the write-path benchmark (DESIGN.md, "The write path is sacred").
 *
 *   npm run bench                  every part, full length (about 6 minutes)
 *   npm run bench -- --quick       short run for CI (about a minute): same cases, noisier
 *   npm run bench -- --seconds 20  longer single-row rounds
 *   npm run bench -- --part capture   the write path only (bench/capture.ts)
 *   npm run bench -- --part delivery  delivery latency, throughput and fan-out vs
 *                                     graphile-worker (bench/delivery.ts; database
 *                                     outbox_bench_delivery)
 *   npm run bench -- --part webhook   events/s to a local HTTP receiver, batch_size 1 and 100
 *                                     (bench/webhook.ts; database outbox_bench_webhook)
 *
 * Uses DATABASE_URL's server when set, else an embedded PostgreSQL. It drops and recreates
 * the database `outbox_bench` there, migrates it, and writes the results to
 * bench/results/capture-<timestamp>.json and bench/results/latest.json. A missed goal is
 * printed, not failed on (exit 0): throughput depends on the machine, the ratios are the
 * report.
 */
import { execFile } from "node:child_process";
import { mkdir, writeFile } from "node:fs/promises";
import { cpus, loadavg, totalmem } from "node:os";
import { fileURLToPath } from "node:url";
import { parseArgs, promisify } from "node:util";
import postgres from "postgres";
import { startEmbeddedPostgres, type EmbeddedServer } from "../src/db/embeddedPostgres.js";
import { migrate } from "../src/db/migrate.js";
import { runCapture, runWorkerCase, setupCapture, type CaptureOptions, type CaseResult, type WorkerCaseResult } from "./capture.js";
import { printDelivery, runDelivery } from "./delivery.js";
import { printWebhook, runWebhook } from "./webhook.js";

const DATABASE = "outbox_bench";
const resultsDir = new URL("./results/", import.meta.url);

const { values: args } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    seconds: { type: "string" },
    rounds: { type: "string" },
    reps: { type: "string" },
    driver: { type: "string" },
    part: { type: "string", default: "all" },
    samples: { type: "string" },
    events: { type: "string" },
    "fan-events": { type: "string" },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (args.help) {
  console.log(`usage: npm run bench -- [--quick] [--seconds N] [--rounds N] [--reps N] [--driver pgbench|node]
  --quick       short run for CI (2 s rounds, 2 rounds, 3 bulk repetitions)
  --seconds N   seconds per single-row round and variant (default 10)
  --rounds N    single-row rounds per variant, alternating (default 5)
  --reps N      timed repetitions of each 10,000-row statement (default 9)
  --driver      pgbench (default when on PATH) or node (postgres.js, 4 connections)
  --part        all (default), capture, or delivery (bench/delivery.ts: latency, throughput
                and fan-out against graphile-worker; --samples N latency samples (300),
                --events N throughput events (20000), --fan-events N fan-out events (20000)),
                or webhook (bench/webhook.ts: events/s to a local HTTP receiver)`);
  process.exit(0);
}

function positive(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) {
    console.error(`--${name} must be a positive number, not ${JSON.stringify(value)}`);
    process.exit(2);
  }
  return n;
}

async function hasPgbench(): Promise<boolean> {
  try {
    await promisify(execFile)("pgbench", ["--version"]);
    return true;
  } catch {
    return false;
  }
}

/** Which trigger SQL was measured: the commit, and whether sql/ or drizzle/ had local edits. */
async function gitState(): Promise<{ commit: string; dirty: boolean } | null> {
  const cwd = fileURLToPath(new URL("..", import.meta.url));
  try {
    const { stdout: commit } = await promisify(execFile)("git", ["rev-parse", "HEAD"], { cwd });
    const { stdout: status } = await promisify(execFile)("git", ["status", "--porcelain", "--", "sql", "drizzle"], { cwd });
    return { commit: commit.trim(), dirty: status.trim() !== "" };
  } catch {
    return null;
  }
}

function withDatabase(url: string, database: string): string {
  const parsed = new URL(url);
  parsed.pathname = `/${database}`;
  return parsed.toString();
}

const fmt = (n: number): string => Math.round(n).toLocaleString("en-US");

function printTable(cases: CaseResult[], workerCase: WorkerCaseResult): void {
  const header = ["case", "unit", "baseline", "captured", "ratio", "goal", "result", "bare ratio", "add_job ratio"];
  // Ratios are medians of per-round ratios (bench/capture.ts), hence not exactly captured/baseline.
  const rows = cases.map((c) => [
    c.label, c.unit, fmt(c.plain.median), fmt(c.captured.median), c.ratio.toFixed(2), `>= ${c.goal.toFixed(2)}`,
    c.pass ? "pass" : "MISSED", c.bareRatio.toFixed(2), c.naiveRatio?.toFixed(2) ?? "",
  ]);
  const w = workerCase;
  rows.push([
    w.label, "tx/s", fmt(w.plain.median), fmt(w.captured.median), w.ratio.toFixed(2),
    `>= ${(w.ratioWithoutWorker - 0.05).toFixed(2)}`, w.pass ? "pass" : "MISSED", "", "",
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]): string =>
    cells.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join("  ");
  console.log(`\n${line(header)}\n${widths.map((w) => "-".repeat(w)).join("  ")}`);
  for (const r of rows) console.log(line(r));
  console.log("\nbaseline: the same table without capture; ratio: median of per-round captured/baseline");
  console.log("bare: a row trigger inserting one jsonb row per changed row (DESIGN.md), for context");
  console.log("add_job: the naive design, a row trigger calling graphile_worker.add_job per row");
  console.log(`worker delivering: the worker ran in both variants and delivered all ${fmt(w.delivered)} events; ` +
    `${w.wakeNotifications} wake-up notifications for ${fmt(w.transactions)} captured transactions; ` +
    `goal: no lower than the ratio without a worker in the same rounds (${w.ratioWithoutWorker.toFixed(2)}: ` +
    `${fmt(w.capturedAlone.median)} / ${fmt(w.plainAlone.median)} tx/s) minus 0.05 of noise`);
  if (w.workerCpuPerEvent) {
    // What the writers lose on shared cores: the worker's CPU per event against the machine
    // time one captured transaction took without a worker (all cores, all processes).
    const { node, postgres } = w.workerCpuPerEvent;
    console.log(`worker CPU per event: ${fmt(node + postgres)} µs (Node ${fmt(node)}, PostgreSQL ${fmt(postgres)}); ` +
      `machine time per captured transaction without a worker: ${fmt((cpus().length * 1e6) / w.capturedAlone.median)} µs ` +
      `(${cpus().length} cores / ${fmt(w.capturedAlone.median)} tx/s)`);
  }
  if (w.control) {
    console.log(`control: captured/baseline ${w.control.ratio.toFixed(2)} with no worker but a process spinning ` +
      `${fmt(w.control.loadMicrosPerSecond.median / 1e4)}% of a core (the worker's CPU per second in the same rounds), ` +
      `against ${w.ratio.toFixed(2)} with the worker: the worker's cost to the writers beyond its CPU is the difference`);
  }
  const missed = [...cases.filter((c) => !c.pass).map((c) => `${c.label} ${c.ratio.toFixed(2)} < ${c.goal.toFixed(2)}`),
    ...(w.pass ? [] : [`${w.label} ${w.ratio.toFixed(2)} < ${(w.ratioWithoutWorker - 0.05).toFixed(2)}`])];
  console.log(missed.length ? `GOAL MISSED: ${missed.join("; ")}` : "all goals met");
}

const quick = args.quick ?? false;
if (!["all", "capture", "delivery", "webhook"].includes(args.part!)) {
  console.error(`--part must be all, capture, delivery or webhook, not ${JSON.stringify(args.part)}`);
  process.exit(2);
}
const driver = args.driver ?? ((await hasPgbench()) ? "pgbench" : "node");
if (driver !== "pgbench" && driver !== "node") {
  console.error(`--driver must be pgbench or node, not ${JSON.stringify(driver)}`);
  process.exit(2);
}

let embedded: EmbeddedServer | undefined;
let serverUrl = process.env.DATABASE_URL;
if (!serverUrl) {
  console.error("DATABASE_URL is not set: starting an embedded PostgreSQL for the benchmark");
  embedded = await startEmbeddedPostgres();
  serverUrl = embedded.url;
}

try {
  if (args.part === "all" || args.part === "capture") await capturePart(serverUrl);
  if (args.part === "all" || args.part === "delivery") await deliveryPart(serverUrl);
  if (args.part === "all" || args.part === "webhook") await webhookPart(serverUrl);
} finally {
  await embedded?.stop();
}

/**
 * Writes a part's report to bench/results/<part>-<start time>.json and to its "latest" file
 * (latest.json for capture, which README and earlier runs refer to; <part>-latest.json else).
 */
async function writeReport(
  part: "capture" | "delivery" | "webhook", started: Date, loadAtStart: number, fields: Record<string, unknown>,
): Promise<void> {
  const report = {
    part,
    startedAt: started.toISOString(),
    durationSeconds: Math.round((Date.now() - started.getTime()) / 1000),
    git: await gitState(),
    machine: {
      cpus: cpus().length, cpuModel: cpus()[0]?.model, memoryBytes: totalmem(), node: process.version,
      loadAverage: { start: loadAtStart, end: loadavg()[0] },
    },
    ...fields,
  };
  await mkdir(resultsDir, { recursive: true });
  const stamp = started.toISOString().replace(/[:.]/g, "-");
  const latest = part === "capture" ? "latest.json" : `${part}-latest.json`;
  const json = `${JSON.stringify(report, null, 2)}\n`;
  await writeFile(new URL(`${part}-${stamp}.json`, resultsDir), json);
  await writeFile(new URL(latest, resultsDir), json);
  console.log(`\nwritten: bench/results/${part}-${stamp}.json and bench/results/${latest}`);
}

/** Load average before a part, with a warning when other work may move its figures. */
function loadBefore(): number {
  const load = loadavg()[0]!;
  if (load > 1) console.error(`note: load average ${load.toFixed(2)} before the run; expect noisier figures`);
  return load;
}

async function deliveryPart(serverUrl: string): Promise<void> {
  const options = {
    samples: positive("samples", args.samples, quick ? 100 : 300),
    warmup: quick ? 10 : 30,
    intervalMs: 20,
    events: positive("events", args.events, quick ? 5000 : 20_000),
    batch: 100,
    fanEvents: positive("fan-events", args["fan-events"], quick ? 1000 : 20_000),
    // Half the rate 4 clients reach on this machine's kind with capture, so the writers are
    // not the bottleneck; it needs pgbench.
    loadRate: driver === "pgbench" ? 2000 : 0,
    loadSeconds: quick ? 3 : 10,
  };
  const started = new Date();
  const loadAtStart = loadBefore();
  const result = await runDelivery({ ...options, serverUrl, log: (l) => console.error(l) });
  printDelivery(result);
  await writeReport("delivery", started, loadAtStart, { options, server: { embedded: embedded !== undefined }, ...result });
}

async function webhookPart(serverUrl: string): Promise<void> {
  const options = { events: quick ? 5000 : 30_000, batchedEvents: quick ? 20_000 : 200_000 };
  const started = new Date();
  const loadAtStart = loadBefore();
  const result = await runWebhook({ ...options, serverUrl, log: (l) => console.error(l) });
  printWebhook(result);
  await writeReport("webhook", started, loadAtStart, { options, server: { embedded: embedded !== undefined }, ...result });
}

async function capturePart(serverUrl: string): Promise<void> {
  const admin = postgres(serverUrl, { max: 1, onnotice: () => undefined });
  await admin.unsafe(`drop database if exists ${DATABASE} with (force)`);
  await admin.unsafe(`create database ${DATABASE}`);
  await admin.end();

  const url = withDatabase(serverUrl, DATABASE);
  const sql = postgres(url, { max: 2, onnotice: () => undefined });
  await migrate(sql);
  await setupCapture(sql, url);

  // Settings that move the figures: commit durability, and whether the outbox got lz4 (builds
  // without it, such as some embedded binaries, compress large statements with slower pglz).
  const [server] = await sql<{ version: string; fsync: string; synchronous_commit: string; shared_buffers: string; rows_compression: string }[]>`
    select current_setting('server_version') as version, current_setting('fsync') as fsync,
           current_setting('synchronous_commit') as synchronous_commit,
           current_setting('shared_buffers') as shared_buffers,
           (select case attcompression when 'l' then 'lz4' when 'p' then 'pglz' else current_setting('default_toast_compression') end
            from pg_attribute where attrelid = 'outbox._events'::regclass and attname = 'rows') as rows_compression`;
  // Five rounds, not three: on a shared 2-core VM one slow round in three moved the single-row
  // ratio by 0.1; the median of five per-round ratios held within a few hundredths.
  const options: Omit<CaptureOptions, "url" | "log"> = {
    seconds: positive("seconds", args.seconds, quick ? 2 : 10),
    rounds: positive("rounds", args.rounds, quick ? 2 : 5),
    reps: positive("reps", args.reps, quick ? 3 : 9),
    clients: 4,
    driver: driver as CaptureOptions["driver"], // validated above
  };
  console.error(`PostgreSQL ${server!.version} (fsync ${server!.fsync}, synchronous_commit ${server!.synchronous_commit}, shared_buffers ${server!.shared_buffers}, outbox rows ${server!.rows_compression}), ${cpus().length} cores`);
  // Other work on the machine moves absolute figures a lot and ratios somewhat: say so.
  const loadAtStart = loadBefore();
  const started = new Date();
  // Progress goes to stderr so that stdout carries only the table.
  const cases = await runCapture(sql, { ...options, url, log: (l) => console.error(l) });
  const workerCase = await runWorkerCase(sql, { ...options, url, log: (l) => console.error(l) });
  await sql.end();
  printTable(cases, workerCase);

  await writeReport("capture", started, loadAtStart, {
    options: { ...options, quick },
    server: { ...server, embedded: embedded !== undefined },
    cases,
    workerCase,
  });
}
