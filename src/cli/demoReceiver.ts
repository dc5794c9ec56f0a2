/**
 * The demo's webhook receiver: a small HTTP server that takes pg-outbox's webhook requests,
 * checks their Standard Webhooks signature when it has the secret, and prints each event.
 * `outbox demo` runs one in-process; `outbox demo-receiver` runs one on its own (the
 * `receiver` service of docker-compose.yml).
 */
import { timingSafeEqual } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { webhookSignature } from "../transports/webhook.js";

/** Options of {@link startDemoReceiver}. */
export interface DemoReceiverOptions {
  /** Port; default 8080 (0 picks a free one). */
  port?: number;
  /** Address to bind; default all interfaces. */
  host?: string;
  /**
   * The subscription's `whsec_…` secret: requests whose `webhook-signature` does not match,
   * or whose `webhook-timestamp` is more than 5 minutes off, are answered 401. Default none:
   * every request is taken (and reported as unsigned when it carries no signature).
   */
  secret?: string;
  /**
   * Answer 503 to the first request carrying an event for which this returns true, so that
   * pg-outbox retries it (the demo's failing row). Default: never.
   */
  failFirstAttempt?: (event: ReceivedEvent) => boolean;
  /** Called with a line for each event taken or refused; default prints it to stdout. */
  print?: (line: string) => void;
}

/** An event as the receiver saw it. */
export interface ReceivedEvent {
  id: string;
  type: string;
  key?: unknown;
  [field: string]: unknown;
}

/** A running receiver. */
export interface DemoReceiver {
  /** `http://<host>:<port>`, with 127.0.0.1 for a receiver on all interfaces. */
  url: string;
  port: number;
  /** Events answered 2xx, in the order they arrived (a retried event appears once it succeeded). */
  received: ReceivedEvent[];
  close(): Promise<void>;
}

/** Tolerance on `webhook-timestamp`, as Standard Webhooks libraries use. */
const TIMESTAMP_TOLERANCE_S = 5 * 60;
const MAX_BODY_BYTES = 16 * 1024 * 1024;

/**
 * Starts the receiver. `GET /healthz` answers 200 (for container healthchecks); a POST to
 * any other path is a webhook request: 204 when taken, 401 when the signature is wrong, 400
 * when the body is not JSON, 503 for the first attempt of an event `failFirstAttempt` picks.
 */
export async function startDemoReceiver(options: DemoReceiverOptions = {}): Promise<DemoReceiver> {
  const print = options.print ?? ((line: string) => console.log(line));
  const received: ReceivedEvent[] = [];
  const failedOnce = new Set<string>();

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    if (req.method === "GET" && req.url === "/healthz") return void res.writeHead(200, { "content-type": "text/plain" }).end("ok\n");
    if (req.method !== "POST") return void res.writeHead(405, { allow: "POST" }).end();
    let body = "";
    let size = 0;
    for await (const chunk of req as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) return void res.writeHead(413).end();
      body += chunk.toString("utf8");
    }
    const header = (name: string) => (typeof req.headers[name] === "string" ? (req.headers[name] as string) : "");
    const id = header("webhook-id");
    if (options.secret) {
      const problem = signatureProblem(options.secret, id, header("webhook-timestamp"), header("webhook-signature"), body);
      if (problem) {
        print(`  ✗ webhook refused (${problem}): answered 401`);
        return void res.writeHead(401, { "content-type": "text/plain" }).end(`${problem}\n`);
      }
    }
    let events: ReceivedEvent[];
    try {
      const parsed = JSON.parse(body) as ReceivedEvent | ReceivedEvent[];
      events = Array.isArray(parsed) ? parsed : [parsed];
    } catch {
      return void res.writeHead(400, { "content-type": "text/plain" }).end("the body is not JSON\n");
    }
    const toFail = events.find((event) => !failedOnce.has(event.id) && options.failFirstAttempt?.(event));
    if (toFail) {
      failedOnce.add(toFail.id);
      print(`  ⇄ webhook got ${toFail.type} key=${JSON.stringify(toFail.key)}: answered 503 on purpose, pg-outbox will retry`);
      return void res.writeHead(503, { "content-type": "text/plain" }).end("simulated outage, try again\n");
    }
    const signed = options.secret ? "signature ok" : header("webhook-signature") ? "signature not checked" : "unsigned";
    for (const event of events) {
      received.push(event);
      print(`  ⇄ webhook got ${event.type} key=${JSON.stringify(event.key)} (webhook-id ${id}, ${signed})`);
    }
    res.writeHead(204).end();
  };

  const server = createServer((req, res) => {
    handle(req, res).catch(() => {
      if (!res.headersSent) res.writeHead(500);
      res.end();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? 8080, options.host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  const host = !options.host || options.host === "0.0.0.0" || options.host === "::" ? "127.0.0.1" : options.host;
  return {
    url: `http://${host.includes(":") ? `[${host}]` : host}:${port}`,
    port,
    received,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** Why a request's Standard Webhooks signature does not hold, or undefined when it does. */
function signatureProblem(secret: string, id: string, timestamp: string, signatures: string, body: string): string | undefined {
  if (!id || !timestamp || !signatures) return "webhook-id, webhook-timestamp or webhook-signature missing";
  const seconds = Number(timestamp);
  if (!Number.isInteger(seconds) || Math.abs(Date.now() / 1000 - seconds) > TIMESTAMP_TOLERANCE_S) return "webhook-timestamp too far from now";
  const expected = Buffer.from(webhookSignature(secret, id, seconds, body));
  // The header may carry one signature per secret while secrets rotate; one match is enough.
  const match = signatures.split(" ").some((candidate) => {
    const given = Buffer.from(candidate);
    return given.length === expected.length && timingSafeEqual(given, expected);
  });
  return match ? undefined : "signature does not match";
}
