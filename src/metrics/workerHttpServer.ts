/**
 * The worker's HTTP endpoints for operations: `/healthz` (readiness: the database answers and
 * has every migration this version ships) and `/metrics` (Prometheus text). Off unless the
 * worker is given a port.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Sql } from "postgres";
import { captureList } from "../db/captures.js";
import { migrationStatusRead, type MigrationStatus } from "../db/migrate.js";
import { statusMetricsRead } from "../db/status.js";
import { ConfigError, NoAnswerError } from "../errors.js";
import { renewingClient, type RenewingClient } from "../db/renewingClient.js";
import { settleWithin } from "../db/settleWithin.js";
import type { Logger } from "../logger.js";
import { workerClientOptions } from "../worker/workerClientOptions.js";
import { WorkerMetrics } from "./workerMetrics.js";

/** How long a health check or a scrape's database read may take before it counts as failed. */
const CHECK_TIMEOUT_MS = 5000;

/** The body of `/healthz`. */
export interface HealthReport {
  /**
   * `ok`; `degraded` (still ready, HTTP 200: writes to a captured table may be bypassing
   * capture, DESIGN.md guarantee 8); `unavailable` (HTTP 503).
   */
  status: "ok" | "degraded" | "unavailable";
  /** What is wrong, and what to do. */
  reason?: string;
  migrations?: MigrationStatus;
  /** Captured tables whose capture is not healthy, with what `outbox.captures.health` says. */
  captures?: Array<{ table: string; health: string }>;
}

/**
 * Metrics and health endpoints of one worker. Its database reads go through a connection of
 * its own (opened at the first request), so that a worker busy delivering still answers, and
 * a health check never waits behind deliveries for the worker's pool.
 */
export class WorkerHttpServer {
  /** The worker's metrics; the worker feeds the counters. */
  readonly metrics: WorkerMetrics;
  private readonly connection: RenewingClient;
  private server: Server | undefined;

  constructor(private readonly options: { connectionString: string; logger: Logger; workerId: string }) {
    // Replaced rather than reconnected when it closes or a read gets no answer: see
    // src/db/renewingClient.ts. On a pool of one, a lost read would hold up every later check.
    this.connection = renewingClient(
      options.connectionString,
      {
        ...workerClientOptions,
        max: 1,
        connect_timeout: CHECK_TIMEOUT_MS / 1000,
        idle_timeout: 60,
        connection: { application_name: "pg-outbox http", statement_timeout: CHECK_TIMEOUT_MS },
      },
      { logger: options.logger, endTimeout: 0 },
    );
    this.metrics = new WorkerMetrics({
      readStatus: () => this.read((sql) => statusMetricsRead(sql), "the metrics read"),
      logger: options.logger,
      workerId: options.workerId,
    });
  }

  /** Runs a read within CHECK_TIMEOUT_MS (a restart or a dropped database can leave one unsettled). */
  private async read<T>(work: (sql: Sql) => Promise<T>, what: string): Promise<T> {
    try {
      return await settleWithin(work(this.connection.sql), CHECK_TIMEOUT_MS);
    } catch (error) {
      if (error instanceof NoAnswerError) this.connection.renew(`${what} got no answer in time`);
      throw error;
    }
  }

  /** Starts listening; returns the bound port (useful with port 0, any free port). */
  async listen(port: number, host?: string): Promise<number> {
    const server = createServer((req, res) => void this.handle(req, res));
    try {
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen(port, host, () => {
          server.off("error", reject);
          resolve();
        });
      });
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      throw new ConfigError(
        `cannot serve /healthz and /metrics on ${host ?? ""}:${port}: ${code === "EADDRINUSE" ? "the port is in use" : (error as Error).message}; ` +
          "choose another port (OUTBOX_HTTP_PORT, or the worker option httpPort) or turn it off (OUTBOX_HTTP_PORT=off)",
        { cause: error },
      );
    }
    this.server = server;
    const bound = (server.address() as AddressInfo).port;
    this.options.logger.info({ port: bound, host: host ?? "all interfaces" }, "serving /healthz and /metrics");
    return bound;
  }

  /** Readiness: the database answers and every migration shipped here is applied. */
  async health(): Promise<HealthReport> {
    try {
      const migrations = await this.read((sql) => migrationStatusRead(sql), "the health check");
      if (!migrations.current) {
        return {
          status: "unavailable",
          reason:
            migrations.applied === 0
              ? "the outbox schema is not migrated: run `outbox migrate`"
              : `migrations are behind (${migrations.applied} applied, this version ships ${migrations.expected}): run \`outbox migrate\``,
          migrations,
        };
      }
      // Capture health does not make the worker unready (restarting it cannot fix a
      // disabled trigger), but it must show where operators look.
      const captures = (await this.read((sql) => captureList(sql), "the health check"))
        .filter((c) => c.health !== "ok")
        .map((c) => ({ table: `${c.schemaName}.${c.tableName}`, health: c.health }));
      if (captures.length > 0) {
        return { status: "degraded", reason: `capture is not healthy on ${captures.map((c) => c.table).join(", ")}: see outbox capture list`, migrations, captures };
      }
      return { status: "ok", migrations };
    } catch (error) {
      return { status: "unavailable", reason: `database unreachable: ${error instanceof Error ? error.message : String(error)}` };
    }
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? "/").split("?")[0];
    try {
      if (req.method !== "GET" && req.method !== "HEAD") {
        res.writeHead(405, { allow: "GET, HEAD" }).end();
      } else if (path === "/healthz") {
        const report = await this.health();
        res.writeHead(report.status === "unavailable" ? 503 : 200, { "content-type": "application/json" }).end(JSON.stringify(report));
      } else if (path === "/metrics") {
        const text = await this.metrics.registry.metrics();
        res.writeHead(200, { "content-type": this.metrics.registry.contentType }).end(text);
      } else {
        res.writeHead(404, { "content-type": "text/plain" }).end("pg-outbox worker: GET /healthz or /metrics\n");
      }
    } catch (error) {
      this.options.logger.error({ err: error, path }, "http request failed");
      if (!res.headersSent) res.writeHead(500, { "content-type": "text/plain" });
      res.end("internal error\n");
    }
  }

  /** Stops listening and closes the connection. */
  async close(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (server) {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
    await this.connection.end({ timeout: 1 }).catch(() => undefined);
  }
}
