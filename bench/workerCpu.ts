/**
 * CPU time a worker running in this process uses: this process (Node) plus the PostgreSQL
 * backends serving it (its pool, the dispatcher's connection, graphile-worker's pool). On two
 * cores shared with the writers, that time is what the writers lose while a worker delivers,
 * so the write-path case reports it per event. Read from /proc, hence Linux and a server on
 * this machine only; elsewhere the figure is left out.
 */
import { readFile } from "node:fs/promises";
import type { Sql } from "postgres";

/** CPU used since a {@link workerCpuStart}, in milliseconds. */
export interface WorkerCpu {
  nodeMs: number;
  postgresMs: number;
}

interface Start {
  node: NodeJS.CpuUsage;
  backends: Map<number, number>;
}

// USER_HZ: /proc reports CPU time in ticks of 10 ms on Linux.
const TICK_MS = 10;

async function ticks(pid: number): Promise<number | undefined> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, "utf8");
    // A server on another machine: this pid, if it exists here, is some other process.
    if (!stat.startsWith(`${pid} (postgres)`)) return undefined;
    // Fields after the command name (which may hold spaces): utime and stime are 12th and 13th.
    const fields = stat.split(") ")[1]!.split(" ");
    return Number(fields[11]) + Number(fields[12]);
  } catch {
    return undefined;
  }
}

/**
 * Starts counting. The worker's backends are those named `pg-outbox …` and graphile-worker's
 * unnamed ones; the benchmark's own connections are named by postgres.js or pgbench. Returns
 * undefined where /proc cannot be read for them.
 */
export async function workerCpuStart(sql: Sql): Promise<Start | undefined> {
  const rows = await sql<{ pid: number }[]>`
    select pid from pg_stat_activity
    where datname = current_database() and backend_type = 'client backend'
      and (application_name like 'pg-outbox%' or application_name = '')`;
  const backends = new Map<number, number>();
  for (const { pid } of rows) {
    const t = await ticks(pid);
    if (t === undefined) return undefined;
    backends.set(pid, t);
  }
  return { node: process.cpuUsage(), backends };
}

/** CPU used since `start`; a backend that ended meanwhile (a renewed connection) is left out. */
export async function workerCpuSince(start: Start): Promise<WorkerCpu> {
  const node = process.cpuUsage(start.node);
  let backendTicks = 0;
  for (const [pid, before] of start.backends) {
    const now = await ticks(pid);
    if (now !== undefined) backendTicks += now - before;
  }
  return { nodeMs: (node.user + node.system) / 1000, postgresMs: backendTicks * TICK_MS };
}
