/**
 * Runs pgbench on a one-statement script, for the write-path and the under-load cases: the
 * writers then live in a process of their own, so CPU counted for the benchmark's process is
 * the worker's alone.
 */
import { execFile } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";

/** How pgbench runs the script. */
export interface PgbenchOptions {
  clients: number;
  seconds: number;
  /** Transactions per second to hold to (`-R`); unset, as fast as the clients go. */
  rate?: number;
}

/** Runs `script` (pgbench's syntax) against `url`; returns the transactions per second pgbench reports. */
export async function pgbench(url: string, script: string, opts: PgbenchOptions): Promise<number> {
  const dir = await mkdtemp(join(tmpdir(), "outbox-bench-"));
  try {
    const file = join(dir, "script.sql");
    await writeFile(file, script);
    // -M prepared: what ORMs and drivers do; it also keeps parsing out of the baseline, so the
    // trigger's share of each transaction is not diluted. -n: there are no pgbench tables.
    const { stdout } = await promisify(execFile)("pgbench", [
      "-n", "-M", "prepared", "-c", String(opts.clients), "-j", String(Math.min(opts.clients, 2)),
      ...(opts.rate ? ["-R", String(opts.rate)] : []),
      "-T", String(opts.seconds), "-f", file, url,
    ]);
    const tps = /tps = ([\d.]+)/.exec(stdout)?.[1];
    if (!tps) throw new Error(`could not read tps from pgbench output:\n${stdout}`);
    return Number(tps);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
