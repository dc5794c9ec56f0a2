/**
 * Latency under load, for the delivery part of the benchmark: commit → handler while writers
 * keep a steady stream going, so the worker is busy (marked busy, reading by itself, gathering
 * writes between rounds) rather than woken per write as in the idle latency case. Also the
 * worker's CPU per event at that rate. No goal: it shows what a busy worker's pacing costs in
 * latency, beside what it costs in CPU (the write-path case of bench/capture.ts).
 *
 * The writers are pgbench (`-R`: a steady rate), in a process of their own, so that the CPU
 * counted for this process is the worker's alone. A row's latency runs from its event's `time`
 * (the writer's statement start, as the server clock has it) to the handler call.
 */
import { execFile } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import type { Sql } from "postgres";
import { workerCpuSince, workerCpuStart } from "./workerCpu.js";

/** What {@link measureUnderLoad} found. */
export interface LoadLatency {
  /** Events per second offered: single-row autocommit INSERTs from 4 pgbench clients. */
  rate: number;
  seconds: number;
  events: number;
  /** Event time (statement start) until the handler runs, in ms (whole ms: the event's time is read by `Date.parse`). */
  p50: number;
  p99: number;
  max: number;
  /** The worker's CPU per event (Node, and the PostgreSQL backends serving it), in µs; null where /proc cannot be read. */
  workerCpuPerEvent: { node: number; postgres: number } | null;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, Math.max(0, ms)));

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}

/**
 * Inserts into `table` (a captured table with a `note text` column, whose handler pushes
 * `Date.now() - Date.parse(event.time)` onto `latencies`) at `rate` rows per second for
 * `seconds`, then waits for every row's event to reach the handler.
 */
export async function measureUnderLoad(
  url: string, sql: Sql, table: string, latencies: number[], rate: number, seconds: number,
): Promise<LoadLatency> {
  const dir = await mkdtemp(join(tmpdir(), "outbox-bench-load-"));
  try {
    const script = join(dir, "load.sql");
    await writeFile(script, `insert into ${table} (note) values ('a short note about this order');\n`);
    latencies.length = 0;
    const cpuStart = await workerCpuStart(sql);
    await promisify(execFile)("pgbench", [
      "-n", "-M", "prepared", "-c", "4", "-j", "2", "-R", String(rate), "-T", String(seconds), "-f", script, url,
    ]);
    const [{ events }] = await sql<{ events: number }[]>`select count(*)::int as events from ${sql(table)}`;
    const deadline = performance.now() + 60_000;
    while (latencies.length < events) {
      if (performance.now() > deadline) throw new Error(`under load: ${latencies.length} of ${events} events reached the handler within a minute`);
      await sleep(10);
    }
    const used = cpuStart ? await workerCpuSince(cpuStart) : undefined;
    const sorted = [...latencies].sort((a, b) => a - b);
    return {
      rate, seconds, events,
      p50: quantile(sorted, 0.5),
      p99: quantile(sorted, 0.99),
      max: sorted[sorted.length - 1]!,
      workerCpuPerEvent: used ? { node: (used.nodeMs * 1000) / events, postgres: (used.postgresMs * 1000) / events } : null,
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
