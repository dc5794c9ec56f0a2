/** The `outbox` command line. */
import { Command, CommanderError } from "commander";
import { disableCaptureSql, enableCaptureSql } from "../migrationSql.js";
import { createOutbox } from "../outbox.js";
import { commaList as list, wholeNumber } from "./argumentParsers.js";
import { commandLogger, exitCodes, print, readEnv, reportError, requireDatabaseUrl, withOutbox } from "./context.js";
import { registerDeliveryCommands } from "./deliveryCommands.js";
import { runDemo } from "./demo.js";
import { startDemoReceiver } from "./demoReceiver.js";
import { statusTable } from "./statusTable.js";
import { registerSubscriptionCommands } from "./subscriptionCommands.js";
import { registerTailCommand } from "./tailCommand.js";

const program = new Command()
  .name("outbox")
  .description("pg-outbox: turn Postgres writes into reliably delivered events")
  .showHelpAfterError()
  .exitOverride();

program
  .command("migrate")
  .description("create or upgrade the outbox schema in DATABASE_URL (safe to run concurrently)")
  .action(async () => {
    await withOutbox((outbox) => outbox.migrate());
    console.log("outbox: schema is up to date");
  });

const capture = program.command("capture").description("manage captured tables");
capture
  .command("enable <table>")
  .description("capture INSERT/UPDATE/DELETE of a table as events (idempotent)")
  .option("--operations <list>", "comma-separated: insert,update,delete,truncate", list)
  .option("--columns <list>", "only changes of these columns make an UPDATE an event", list)
  .option("--exclude <list>", "columns that never appear in events", list)
  .option("--tenant-column <column>", "column holding the row's tenant")
  .option("--sql", "print the SQL instead of running it, for your own migrations (no database needed)")
  .action(async (table: string, opts: { operations?: string[]; columns?: string[]; exclude?: string[]; tenantColumn?: string; sql?: boolean }) => {
    const options = {
      ...(opts.operations ? { operations: opts.operations as never } : {}),
      ...(opts.columns ? { columns: opts.columns } : {}),
      ...(opts.exclude ? { excludeColumns: opts.exclude } : {}),
      ...(opts.tenantColumn ? { tenantColumn: opts.tenantColumn } : {}),
    };
    if (opts.sql) return console.log(enableCaptureSql(table, options));
    await withOutbox((outbox) => outbox.enableCapture(table, options));
    console.log(`outbox: capturing ${table}`);
  });
capture
  .command("disable <table>")
  .description("stop capturing a table (events already written stay)")
  .option("--sql", "print the SQL instead of running it, for your own migrations (no database needed)")
  .action(async (table: string, opts: { sql?: boolean }) => {
    if (opts.sql) return console.log(disableCaptureSql(table));
    await withOutbox((outbox) => outbox.disableCapture(table));
    console.log(`outbox: no longer capturing ${table}`);
  });
capture
  .command("list")
  .description("captured tables, their options and health")
  .option("--json", "print JSON")
  .action(async (opts: { json?: boolean }) => {
    const rows = await withOutbox((outbox) => outbox.captures());
    print(rows, Boolean(opts.json), () =>
      rows.length === 0
        ? "no captured tables"
        : rows
            .map((r) => `${r.schemaName}.${r.tableName}  ops=${r.operations.join(",")}  key=${(r.keyColumns ?? []).join(",")}  health=${r.health}`)
            .join("\n"),
    );
    if (rows.some((r) => r.health !== "ok")) process.exitCode = exitCodes.failure;
  });

program
  .command("worker")
  .description("run a worker: dispatch, webhook and notify delivery, retention, /healthz and /metrics on OUTBOX_HTTP_PORT (default 9464); SIGTERM drains and exits")
  .action(async () => {
    const env = readEnv();
    const logger = commandLogger(env);
    const defined = <T extends object>(o: T) => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
    const outbox = createOutbox({
      connectionString: requireDatabaseUrl(env),
      logger,
      worker: defined({
        httpPort: env.OUTBOX_HTTP_PORT,
        httpHost: env.OUTBOX_HTTP_HOST,
        poolSize: env.OUTBOX_POOL_SIZE,
        graphilePoolSize: env.OUTBOX_GRAPHILE_POOL_SIZE,
        pollIntervalMs: env.OUTBOX_POLL_INTERVAL,
        busyWaitMs: env.OUTBOX_BUSY_WAIT,
        leaseMs: env.OUTBOX_LEASE,
        drainTimeoutMs: env.OUTBOX_DRAIN_TIMEOUT,
        retentionMs: env.OUTBOX_RETENTION,
        deadRetentionMs: env.OUTBOX_DEAD_RETENTION,
      }),
      webhooks: defined({
        allowPrivateNetworks: env.OUTBOX_WEBHOOKS_ALLOW_PRIVATE_NETWORKS,
        deactivateAfterFailingMs: env.OUTBOX_WEBHOOKS_DEACTIVATE_AFTER,
      }),
    });
    // A connection terminated under a pool can surface as a rejection no query owns; the
    // worker recovers from connection loss by itself, so such a rejection is logged, not fatal.
    process.on("unhandledRejection", (reason) => logger.error({ err: reason }, "unhandled rejection (continuing)"));
    const worker = await outbox.start();
    const shutdown = (signal: string) => {
      logger.info({ signal }, "stopping");
      void worker.stop().then(() => outbox.close());
    };
    process.once("SIGTERM", () => shutdown("SIGTERM"));
    process.once("SIGINT", () => shutdown("SIGINT"));
    await worker.stopped;
  });

program
  .command("status")
  .description("per subscription: pending, retrying, dead, delivered in the last hour, oldest pending age; dispatch lag; capture health")
  .option("--json", "print JSON")
  .action(async (opts: { json?: boolean }) => {
    const status = await withOutbox((outbox) => outbox.status());
    print(status, Boolean(opts.json), () => statusTable(status));
    if (status.captures.some((c) => c.health !== "ok")) process.exitCode = exitCodes.failure;
  });

registerSubscriptionCommands(program);
registerDeliveryCommands(program);
registerTailCommand(program);

program
  .command("demo-receiver")
  .description(
    "the demo's webhook receiver on its own (docker-compose.yml's receiver service): prints each event it gets, GET /healthz answers 200; SIGTERM or Ctrl-C stops it",
  )
  .option("--port <port>", "port to listen on; 0 for any free port", wholeNumber(0, 65_535), 8080)
  .option("--host <address>", "address to bind (default: all interfaces)")
  .option("--secret <whsec>", "the subscription's signing secret: refuse requests whose signature does not match (default: signatures are not checked)")
  .action(async (opts: { port: number; host?: string; secret?: string }) => {
    const receiver = await startDemoReceiver({ port: opts.port, ...(opts.host ? { host: opts.host } : {}), ...(opts.secret ? { secret: opts.secret } : {}) });
    console.log(`outbox demo-receiver: listening on ${receiver.url} (port ${receiver.port})${opts.secret ? ", checking signatures" : ""}`);
    await new Promise<void>((resolve) => {
      const stop = () => void receiver.close().then(resolve);
      process.once("SIGTERM", stop);
      process.once("SIGINT", stop);
    });
  });

program
  .command("demo")
  .description("events flowing end to end on the embedded PostgreSQL (or DATABASE_URL when set)")
  .action(async () => {
    await runDemo(readEnv());
  });

try {
  await program.parseAsync(process.argv);
} catch (error) {
  if (error instanceof CommanderError) {
    process.exitCode = error.exitCode === 0 ? exitCodes.ok : exitCodes.usage;
  } else {
    process.exitCode = reportError(error);
  }
}
