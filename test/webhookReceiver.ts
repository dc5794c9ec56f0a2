/**
 * Real HTTP endpoints for the webhook tests (test/webhook.*.test.ts): a node:http server on
 * 127.0.0.1 that records every request and answers with a function the test can swap, plus
 * helpers to run a worker with webhook options and to write webhook subscriptions.
 */
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { pino, type Logger } from "pino";
import type { Sql } from "postgres";
import { createOutbox, type Outbox, type OutboxOptions } from "../src/outbox.js";
import type { OutboxWorker } from "../src/worker/worker.js";
import { testWorkerOptions } from "./deliveryHelpers.js";
import type { TestDatabase } from "./harness.js";

/** One request as the receiver saw it. */
export interface ReceivedRequest {
  method: string;
  path: string;
  headers: IncomingHttpHeaders;
  body: string;
  /** When the request had been read completely (Date.now()). */
  at: number;
  /** Which TCP connection carried it (0, 1, … in order of accept). */
  connection: number;
}

/** How the receiver answers; the default answers 204. */
export type Responder = (request: ReceivedRequest, response: ServerResponse, raw: IncomingMessage) => void;

/** A running receiver. */
export interface Receiver {
  /** `http://127.0.0.1:<port>`. */
  origin: string;
  port: number;
  requests: ReceivedRequest[];
  /** Swap to change the answers. */
  respond: Responder;
  /** TCP connections accepted so far. */
  connections: number;
  /** Requests being handled right now, and the most seen at once. */
  inFlight: number;
  maxInFlight: number;
  close(): Promise<void>;
}

/** Starts a receiver on 127.0.0.1, port 0. */
export async function startReceiver(respond: Responder = (_, res) => res.writeHead(204).end()): Promise<Receiver> {
  const receiver = { requests: [] as ReceivedRequest[], respond, connections: 0, inFlight: 0, maxInFlight: 0 } as Receiver;
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    receiver.inFlight++;
    receiver.maxInFlight = Math.max(receiver.maxInFlight, receiver.inFlight);
    res.on("close", () => receiver.inFlight--);
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const request: ReceivedRequest = {
        method: req.method ?? "",
        path: req.url ?? "",
        headers: req.headers,
        body: Buffer.concat(chunks).toString("utf8"),
        at: Date.now(),
        connection: (req.socket as { outboxIndex?: number }).outboxIndex ?? -1,
      };
      receiver.requests.push(request);
      receiver.respond(request, res, req);
    });
  });
  server.on("connection", (socket) => {
    (socket as { outboxIndex?: number }).outboxIndex = receiver.connections++;
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  receiver.port = (server.address() as AddressInfo).port;
  receiver.origin = `http://127.0.0.1:${receiver.port}`;
  receiver.close = () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  return receiver;
}

/** A worker with webhook options, a logger that keeps every line it writes (level trace). */
export async function startWebhookWorker(
  db: TestDatabase,
  webhooks: OutboxOptions["webhooks"] = {},
  worker: OutboxOptions["worker"] = {},
): Promise<{ outbox: Outbox; worker: OutboxWorker; logs: string[]; stop: () => Promise<void> }> {
  const logs: string[] = [];
  const logger: Logger = pino({ level: "trace" }, { write: (line: string) => void logs.push(line) });
  const outbox = createOutbox({ connectionString: db.url, worker: { ...testWorkerOptions, ...worker }, webhooks, logger });
  const running = await outbox.start();
  let stopped = false;
  return {
    outbox,
    worker: running,
    logs,
    stop: async () => {
      if (stopped) return;
      stopped = true;
      await running.stop();
      await outbox.close();
    },
  };
}

/** Inserts a webhook subscription row the way users do, with plain SQL. */
export async function webhookSubscription(sql: Sql, name: string, pattern: string, config: Record<string, unknown>, maxAttempts = 25): Promise<void> {
  await sql`
    insert into outbox.subscriptions (name, pattern, kind, config, max_attempts)
    values (${name}, ${pattern}, 'webhook', ${JSON.stringify(config)}::text::jsonb, ${maxAttempts})`;
}

/** Emits `count` app events on `topic` in one transaction; returns their ids in order. */
export async function emitEvents(sql: Sql, topic: string, count = 1): Promise<string[]> {
  const rows = await sql<{ id: string }[]>`
    select outbox.emit(${topic}, jsonb_build_object('n', g))::text as id from generate_series(1, ${count}::int) g order by g`;
  return rows.map((r) => r.id);
}

/** A subscription's deliveries with the webhook columns, in event order. */
export interface WebhookDelivery {
  id: string;
  event_id: string;
  status: string;
  attempts: number;
  next_attempt_at: Date;
  updated_at: Date;
  last_error: string | null;
  last_status: number | null;
}

export async function webhookDeliveries(sql: Sql, subscription: string): Promise<WebhookDelivery[]> {
  return sql<WebhookDelivery[]>`
    select id::text, event_id::text, status, attempts, next_attempt_at, updated_at, last_error, last_status
    from outbox.deliveries where subscription = ${subscription} order by event_position`;
}

/** A Standard Webhooks secret of `bytes` random-looking bytes (deterministic per seed). */
export function testSecret(seed: string, bytes = 24): string {
  return `whsec_${Buffer.from(seed.repeat(bytes).slice(0, bytes)).toString("base64")}`;
}
