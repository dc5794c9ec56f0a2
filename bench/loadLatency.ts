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
import type { Sql } from "postgres";
import { pgbench } from "./pgbench.js";
import { quantile } from "./quantile.js";
import { waitFor } from "./waitFor.js";
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

/**
 * Inserts into `table` (a captured table with a `note text` column, whose handler pushes
 * `Date.now() - Date.parse(event.time)` onto `latencies`) at `rate` rows per second for
 * `seconds`, then waits for every row's event to reach the handler.
 */
export async function measureUnderLoad(
  url: string, sql: Sql, table: string, latencies: number[], rate: number, seconds: number,
): Promise<LoadLatency> {
  latencies.length = 0;
  const cpuStart = await workerCpuStart(sql);
  await pgbench(url, `insert into ${table} (note) values ('a short note about this order');\n`, { clients: 4, seconds, rate });
  const [{ events }] = await sql<{ events: number }[]>`select count(*)::int as events from ${sql(table)}`;
  await waitFor(() => latencies.length >= events, 60_000, `${events} events under load to reach the handler`);
  const used = cpuStart ? await workerCpuSince(cpuStart) : undefined;
  return {
    rate, seconds, events,
    p50: quantile(latencies, 0.5),
    p99: quantile(latencies, 0.99),
    max: Math.max(...latencies),
    workerCpuPerEvent: used ? { node: (used.nodeMs * 1000) / events, postgres: (used.postgresMs * 1000) / events } : null,
  };
}

/** `; worker CPU … µs per event (Node …, PostgreSQL …)`, or nothing where it could not be read. */
export function workerCpuText(cpu: LoadLatency["workerCpuPerEvent"]): string {
  const us = (n: number) => Math.round(n).toLocaleString("en-US");
  return cpu ? `; worker CPU ${us(cpu.node + cpu.postgres)} µs per event (Node ${us(cpu.node)}, PostgreSQL ${us(cpu.postgres)})` : "";
}
