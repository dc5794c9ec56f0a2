/**
 * The capture part of `npm run bench`: what the capture triggers cost the application's
 * writes (DESIGN.md, "The write path is sacred"). Every figure is a ratio against the same
 * table without capture, measured in the same run on the same server, so machines and
 * settings cancel out.
 *
 * Four tables with identical columns: `bench_plain` (no trigger, the baseline),
 * `bench_captured` (outbox.enable_capture), `bench_bare` (one row trigger inserting one jsonb
 * row per changed row into a plain table; for context) and `bench_naive` (the naive design
 * of a job queue outbox: a row trigger calling `graphile_worker.add_job` per row).
 *
 * A last case repeats the single-row inserts while a worker runs and delivers every captured
 * event to a no-op handler: the write path must not get dearer when workers are busy (no
 * NOTIFY per transaction; only an idle worker is woken).
 */
import { Logger as GraphileLogger, runMigrations } from "graphile-worker";
import postgres, { type ReservedSql, type Sql } from "postgres";
import { createOutbox } from "../src/outbox.js";
import { cpuLoadStart, type CpuLoad } from "./cpuLoad.js";
import { pgbench } from "./pgbench.js";
import { workerCpuStart, workerCpuSince } from "./workerCpu.js";

export const VARIANTS = ["plain", "captured", "bare", "naive"] as const;
export type Variant = (typeof VARIANTS)[number];

export interface CaptureOptions {
  /** The benchmark database, already migrated. */
  url: string;
  /** Duration of one single-row round, per variant. */
  seconds: number;
  /** Single-row rounds per variant (alternating variants). */
  rounds: number;
  /** Timed repetitions of each bulk statement per variant. */
  reps: number;
  clients: number;
  /** pgbench when it is on PATH; the postgres.js loop otherwise (or when asked). */
  driver: "pgbench" | "node";
  log: (line: string) => void;
}

export interface Measure {
  median: number;
  samples: number[];
}

export interface CaseResult {
  id: string;
  label: string;
  unit: "tx/s" | "rows/s";
  goal: number;
  plain: Measure;
  captured: Measure;
  bare: Measure;
  naive: Measure;
  /** Median over rounds of captured / plain. */
  ratio: number;
  /** bare / plain: context only, no goal. */
  bareRatio: number;
  /** naive (add_job per row) / plain: the design DESIGN.md compares against (single-row case only). */
  naiveRatio: number | null;
  pass: boolean;
}

/** Single-row inserts while a worker delivers every captured event (see {@link runWorkerCase}). */
export interface WorkerCaseResult {
  label: string;
  plain: Measure;
  captured: Measure;
  /** Median over rounds of captured / plain, both with the worker running. */
  ratio: number;
  /** Both variants without a worker, in the same rounds. */
  plainAlone: Measure;
  capturedAlone: Measure;
  /** Median over rounds of captured / plain without a worker, measured in the same rounds. */
  ratioWithoutWorker: number;
  /** Wake-up notifications sent during the captured rounds, and the transactions of those rounds. */
  wakeNotifications: number;
  transactions: number;
  /** Events delivered to the handler during the case. */
  delivered: number;
  /**
   * Median over the captured rounds with the worker of the CPU the worker used per event,
   * from the round's start until its last event was delivered, in µs: Node (this process)
   * and the PostgreSQL backends serving the worker. Null where /proc cannot be read.
   */
  workerCpuPerEvent: { node: number; postgres: number } | null;
  /**
   * The control: captured inserts while a neutral CPU load (bench/cpuLoad.ts) uses what the
   * worker used per second in the same round, against the same round's plain inserts without
   * a worker. Equal to `ratio`, the worker costs the writers its CPU and nothing more. Null
   * where the worker's CPU could not be read.
   */
  control: { captured: Measure; ratio: number; loadMicrosPerSecond: Measure } | null;
  pass: boolean;
}

const BULK_ROWS = 10_000;

// Identical columns everywhere, each table with its own sequence (LIKE … INCLUDING ALL would
// share bench_plain's sequence between tables). Autovacuum is off because every round starts
// from truncated tables: an autovacuum landing in one variant's round would only add noise.
const COLUMNS = `id bigserial primary key,
  name text not null,
  note text,
  amount numeric(12,2) not null,
  happened_at timestamptz not null default now(),
  updated_at timestamptz`;

const INSERT_ONE = (table: string): string =>
  `insert into ${table} (name, note, amount) values ('customer ' || :r::text, 'a short note about this order', (:r::bigint % 100000) / 100.0);`;
const INSERT_BULK = (table: string): string =>
  `insert into ${table} (name, note, amount)
   select 'customer ' || g, 'a short note about this order', (g % 100000) / 100.0
   from generate_series(1, ${BULK_ROWS}) g`;
// Every row changes a value (and updated_at), as a backfill or a batch status change would.
const UPDATE_ALL = (table: string): string => `update ${table} set amount = amount + 1, updated_at = now()`;

const table = (v: Variant): string => `bench_${v}`;

/** The connection that resets and times, and whether it may CHECKPOINT. */
interface Db {
  conn: ReservedSql;
  checkpoint: boolean;
}

export async function setupCapture(sql: Sql, url: string): Promise<void> {
  for (const v of VARIANTS) {
    await sql.unsafe(`create table ${table(v)} (${COLUMNS}) with (autovacuum_enabled = false)`);
  }
  // The naive design DESIGN.md compares against: a generic row trigger, one jsonb row each.
  await sql.unsafe(`
    create table bench_bare_log (id bigserial primary key, table_name text not null, op text not null,
      row jsonb not null, created_at timestamptz not null default now()) with (autovacuum_enabled = false);
    create function bench_bare_capture() returns trigger language plpgsql as $$
    begin
      insert into bench_bare_log (table_name, op, row) values (TG_TABLE_NAME, TG_OP, to_jsonb(new));
      return null;
    end $$;
    create trigger bench_bare_capture after insert or update on bench_bare
      for each row execute function bench_bare_capture();`);
  // The naive design: one graphile-worker job per changed row, inside the writer's transaction.
  await runMigrations({ connectionString: url, logger: new GraphileLogger(() => () => undefined) });
  await sql.unsafe(`
    create function bench_naive_capture() returns trigger language plpgsql as $$
    begin
      perform graphile_worker.add_job('bench_capture',
        json_build_object('table', TG_TABLE_NAME, 'op', TG_OP, 'row', to_jsonb(new)));
      return null;
    end $$;
    create trigger bench_naive_capture after insert or update on bench_naive
      for each row execute function bench_naive_capture();`);
  // Capturing truncates too lets reset() TRUNCATE the table (with deletes alone pg-outbox
  // refuses TRUNCATE); it adds no trigger to the insert and update paths measured here.
  await sql`select outbox.enable_capture('bench_captured', operations => '{insert,update,delete,truncate}')`;
  // Same reasoning as for the bench tables; this database is the benchmark's own.
  await sql.unsafe(`alter table outbox._events set (autovacuum_enabled = false)`);
}

const WORKER_HANDLER = "bench_worker_noop";

/**
 * Single-row inserts with and without a worker running in this process. Each round measures
 * four runs back to back: `plain` and `captured` without a worker, then both again while a
 * worker delivers every captured event to a no-op handler (the order of the two phases and
 * of the variants within them alternates). The ratio without a worker is therefore measured
 * in the same minutes as the one with it: taken from the first case, minutes earlier, it
 * moved between 0.66 and 0.89 from run to run on this shared machine, more than the effect
 * measured here. Each captured round with the worker ends only once its events are all
 * delivered, so catching up never lands in another run. A listener counts the wake-up
 * notifications the captured rounds sent: an idle worker is woken once, a busy one never.
 * Each round ends with the control (see {@link WorkerCaseResult.control}): one more captured
 * run without a worker, beside a spinning process using the CPU per second the worker used.
 */
export async function runWorkerCase(sql: Sql, opts: CaptureOptions): Promise<WorkerCaseResult> {
  const db: Db = { conn: await sql.reserve(), checkpoint: true };
  await db.conn.unsafe(`checkpoint`).catch(() => (db.checkpoint = false));
  let delivered = 0;
  const outbox = createOutbox({ connectionString: opts.url });
  outbox.handle(WORKER_HANDLER, "public.bench_captured.insert", () => {
    delivered++;
  });
  let wakes = 0;
  let counting = false;
  const listener = await sql.listen("outbox_wake", () => {
    if (counting) wakes++;
  });
  const samples: Record<"plain" | "captured" | "plainAlone" | "capturedAlone" | "capturedLoaded", number[]> = {
    plain: [], captured: [], plainAlone: [], capturedAlone: [], capturedLoaded: [],
  };
  const loadRates: number[] = [];
  let transactions = 0;
  const cpu = { node: [] as number[], postgres: [] as number[], readable: true };
  const timed = async (v: "plain" | "captured", onStart?: () => Promise<void>): Promise<number> => {
    await reset(db);
    await onStart?.();
    return opts.driver === "pgbench" ? pgbenchTps(opts, v) : nodeTps(opts, v);
  };
  try {
    opts.log(`single-row INSERT transactions without and with a worker delivering every captured event, ${opts.clients} clients`);
    for (let round = 0; round < opts.rounds; round++) {
      const variants = round % 2 ? (["captured", "plain"] as const) : (["plain", "captured"] as const);
      let workerMicrosPerSecond: number | undefined;
      for (const withWorker of round % 2 ? [true, false] : [false, true]) {
        // Emptied first: a worker started on the events of a run without it would deliver
        // them while the next run is measured.
        await reset(db);
        const worker = withWorker ? await outbox.start() : undefined;
        try {
          for (const v of variants) {
            const before = delivered;
            counting = withWorker && v === "captured";
            let cpuStart: Awaited<ReturnType<typeof workerCpuStart>>;
            const tps = await timed(v, async () => {
              if (worker && v === "captured") cpuStart = await workerCpuStart(sql);
            });
            counting = false;
            if (worker && v === "captured") {
              const [{ n }] = await sql<{ n: number }[]>`select coalesce(sum(count), 0)::int as n from outbox._events`;
              transactions += n;
              const deadline = Date.now() + 120_000;
              while (delivered - before < n && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
              if (delivered - before < n) throw new Error(`the worker delivered ${delivered - before} of ${n} events within 2 minutes`);
              if (cpuStart && n > 0) {
                const used = await workerCpuSince(cpuStart);
                cpu.node.push((used.nodeMs * 1000) / n);
                cpu.postgres.push((used.postgresMs * 1000) / n);
                workerMicrosPerSecond = ((used.nodeMs + used.postgresMs) * 1000) / opts.seconds;
              } else cpu.readable = false;
            }
            samples[withWorker ? v : (`${v}Alone` as const)].push(tps);
            opts.log(`  round ${round + 1}/${opts.rounds}  ${withWorker ? "with worker   " : "without worker"}  ${v.padEnd(8)} ${tps.toFixed(0)} tx/s`);
          }
        } finally {
          await worker?.stop();
        }
      }
      if (workerMicrosPerSecond !== undefined) {
        let load: CpuLoad | undefined;
        let started = 0;
        let tps: number;
        try {
          tps = await timed("captured", async () => {
            load = cpuLoadStart(workerMicrosPerSecond!);
            started = performance.now();
          });
        } finally {
          const used = await load?.stop();
          if (used !== undefined) loadRates.push(used / ((performance.now() - started) / 1000));
        }
        samples.capturedLoaded.push(tps);
        opts.log(`  round ${round + 1}/${opts.rounds}  control: ${(workerMicrosPerSecond / 1e4).toFixed(0)}% of a core spun  captured ${tps.toFixed(0)} tx/s`);
      }
    }
  } finally {
    await listener.unlisten();
    await outbox.close();
    db.conn.release();
  }
  const ratio = pairedRatio(samples.captured, samples.plain);
  const ratioWithoutWorker = pairedRatio(samples.capturedAlone, samples.plainAlone);
  return {
    label: `single-row insert, ${opts.clients} clients, worker delivering`,
    plain: measure(samples.plain),
    captured: measure(samples.captured),
    plainAlone: measure(samples.plainAlone),
    capturedAlone: measure(samples.capturedAlone),
    ratio,
    ratioWithoutWorker,
    wakeNotifications: wakes,
    transactions,
    delivered,
    workerCpuPerEvent: cpu.readable && cpu.node.length > 0 ? { node: median(cpu.node), postgres: median(cpu.postgres) } : null,
    control: cpu.readable && samples.capturedLoaded.length === samples.plainAlone.length
      ? {
          captured: measure(samples.capturedLoaded),
          ratio: pairedRatio(samples.capturedLoaded, samples.plainAlone),
          loadMicrosPerSecond: measure(loadRates),
        }
      : null,
    // "Must not drop": within the round-to-round spread of the ratio (about 0.05 here).
    pass: ratio >= ratioWithoutWorker - 0.05,
  };
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
};
const measure = (samples: number[]): Measure => ({ median: median(samples), samples });
// Round r starts with a different variant, so no variant always runs first or last.
const rotated = (round: number, variants: readonly Variant[] = VARIANTS): Variant[] =>
  variants.map((_, i) => variants[(i + round) % variants.length]!);
// The add_job trigger runs in the single-row case only: on 10,000-row statements it takes
// seconds per statement (a job row, its queue bookkeeping and a NOTIFY per row), which would
// make the benchmark slower than its point needs.
const BULK_VARIANTS = VARIANTS.filter((v) => v !== "naive");

/**
 * Every timed round starts from the same state: empty tables (or `seed` fresh rows in the
 * measured one), vacuumed so hint bits and the visibility map are set, an empty outbox, and a
 * CHECKPOINT so no round pays for the dirty pages of the one before. The seeded rows of the
 * update case are checkpointed too, so its UPDATE writes full-page images on both sides, as a
 * backfill of rows untouched since the last checkpoint would.
 */
async function reset(db: Db, seed?: Variant): Promise<void> {
  const { conn } = db;
  await conn.unsafe(`truncate ${VARIANTS.map(table).join(", ")}, bench_bare_log restart identity`);
  if (seed) await conn.unsafe(INSERT_BULK(table(seed)));
  await conn.unsafe(`truncate outbox._events, outbox.deliveries, graphile_worker._private_jobs`);
  await conn.unsafe(`vacuum analyze ${VARIANTS.map(table).join(", ")}, bench_bare_log, outbox._events, outbox.deliveries, graphile_worker._private_jobs`);
  if (db.checkpoint) await conn.unsafe(`checkpoint`);
}

const pgbenchTps = (opts: CaptureOptions, v: Variant): Promise<number> =>
  pgbench(opts.url, `\\set r random(1, 1000000000)\n${INSERT_ONE(table(v))}\n`, opts);

// Fallback without pgbench: `clients` connections each inserting in a loop.
async function nodeTps(opts: CaptureOptions, v: Variant): Promise<number> {
  const sql = postgres(opts.url, { max: opts.clients, onnotice: () => undefined });
  const text = INSERT_ONE(table(v)).replaceAll(":r", "$1");
  try {
    // Open and warm every connection before the clock starts, as pgbench does.
    await Promise.all(Array.from({ length: opts.clients }, () => sql.unsafe(text, [1])));
    let count = 0;
    const start = performance.now();
    const end = start + opts.seconds * 1000;
    await Promise.all(
      Array.from({ length: opts.clients }, async () => {
        while (performance.now() < end) {
          await sql.unsafe(text, [Math.floor(Math.random() * 1e9)], { prepare: true });
          count++;
        }
      }),
    );
    return count / ((performance.now() - start) / 1000);
  } finally {
    await sql.end({ timeout: 5 });
  }
}

async function singleRow(opts: CaptureOptions, db: Db): Promise<Record<Variant, number[]>> {
  const out: Record<Variant, number[]> = { plain: [], captured: [], bare: [], naive: [] };
  for (let round = 0; round < opts.rounds; round++) {
    for (const v of rotated(round)) {
      await reset(db);
      const tps = opts.driver === "pgbench" ? await pgbenchTps(opts, v) : await nodeTps(opts, v);
      out[v].push(tps);
      opts.log(`  single-row insert  round ${round + 1}/${opts.rounds}  ${v.padEnd(8)} ${tps.toFixed(0)} tx/s`);
    }
  }
  return out;
}

/** rows/s of one bulk statement, repeated `reps` times per variant after one warm-up. */
async function bulk(
  opts: CaptureOptions, db: Db, name: string, statement: (t: string) => string, seeded: boolean,
): Promise<Record<Variant, number[]>> {
  const out: Record<Variant, number[]> = { plain: [], captured: [], bare: [], naive: [] };
  // Rep 0 is a warm-up (plpgsql compilation, plan caching, first extension of the files).
  for (let rep = 0; rep <= opts.reps; rep++) {
    for (const v of rotated(rep, BULK_VARIANTS)) {
      await reset(db, seeded ? v : undefined);
      const start = performance.now();
      await db.conn.unsafe(statement(table(v)));
      const rowsPerSecond = BULK_ROWS / ((performance.now() - start) / 1000);
      if (rep === 0) continue;
      out[v].push(rowsPerSecond);
      opts.log(`  ${name}  rep ${rep}/${opts.reps}  ${v.padEnd(8)} ${rowsPerSecond.toFixed(0)} rows/s`);
    }
  }
  return out;
}

// The ratio is the median of per-round ratios: a round's variants ran seconds apart, so a
// disk or neighbour slowdown (this is often a VM) hits both sides of a pair alike, whereas a
// ratio of overall medians can pair a fast baseline round with a slow captured one.
const pairedRatio = (a: number[], base: number[]): number => median(a.map((x, i) => x / base[i]!));

function result(id: string, label: string, unit: CaseResult["unit"], goal: number, samples: Record<Variant, number[]>): CaseResult {
  const [plain, captured, bare, naive] = [measure(samples.plain), measure(samples.captured), measure(samples.bare), measure(samples.naive)];
  const ratio = pairedRatio(samples.captured, samples.plain);
  return {
    id, label, unit, goal, plain, captured, bare, naive, ratio,
    bareRatio: pairedRatio(samples.bare, samples.plain),
    naiveRatio: samples.naive.length ? pairedRatio(samples.naive, samples.plain) : null,
    pass: ratio >= goal,
  };
}

/** Runs the three write-path cases; the database must have been set up by {@link setupCapture}. */
export async function runCapture(sql: Sql, opts: CaptureOptions): Promise<CaseResult[]> {
  const db: Db = { conn: await sql.reserve(), checkpoint: true };
  try {
    // CHECKPOINT is best effort: without superuser or pg_checkpoint the rounds skip it.
    await db.conn.unsafe(`checkpoint`).catch((error: Error) => {
      opts.log(`  note: CHECKPOINT refused (${error.message}); rounds will be noisier`);
      db.checkpoint = false;
    });
    const cases: CaseResult[] = [];
    opts.log(`single-row INSERT transactions, ${opts.clients} clients, ${opts.seconds} s per round (${opts.driver})`);
    cases.push(result("insert_single", `single-row insert, ${opts.clients} clients`, "tx/s", 0.8, await singleRow(opts, db)));
    opts.log(`${BULK_ROWS}-row INSERT … SELECT generate_series`);
    cases.push(result("insert_bulk", `${BULK_ROWS / 1000}k-row insert…select`, "rows/s", 0.5,
      await bulk(opts, db, "bulk insert", INSERT_BULK, false)));
    opts.log(`${BULK_ROWS}-row UPDATE of every row`);
    cases.push(result("update_bulk", `${BULK_ROWS / 1000}k-row update`, "rows/s", 0.5,
      await bulk(opts, db, "bulk update", UPDATE_ALL, true)));
    return cases;
  } finally {
    db.conn.release();
  }
}
