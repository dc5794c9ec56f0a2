import assert from "node:assert/strict";
import { after, test } from "node:test";
import { recordOutcomes } from "./deliveryHelpers.js";
import { useTestDatabase, waitFor } from "./harness.js";
import {
  emitEvents,
  startReceiver,
  startWebhookWorker,
  testSecret,
  webhookDeliveries,
  webhookSubscription,
  type Receiver,
  type WebhookDelivery,
} from "./webhookReceiver.js";

let worker: ReturnType<typeof startWebhookWorker> | undefined;
const receivers: Receiver[] = [];
// Registered before useTestDatabase's hook, so it runs first: the worker stops before its database is dropped.
after(async () => {
  await (await worker)?.stop();
  await Promise.all(receivers.map((r) => r.close()));
});
const db = useTestDatabase();

/** A receiver, and the file's one worker (started with the first receiver, once the database exists). */
async function receiver(...args: Parameters<typeof startReceiver>): Promise<Receiver> {
  worker ??= startWebhookWorker(db);
  await worker;
  const r = await startReceiver(...args);
  receivers.push(r);
  return r;
}

/** Waits until the subscription's first delivery satisfies `check`. */
async function firstDelivery(subscription: string, check: (d: WebhookDelivery) => boolean, what: string, timeoutMs?: number): Promise<WebhookDelivery> {
  return waitFor(async () => {
    const [row] = await webhookDeliveries(db.sql, subscription);
    return row && check(row) ? row : undefined;
  }, what, timeoutMs);
}

test("a 500 is retried: retrying with last_status 500 and the body's start in last_error, then delivered on the next attempt", async () => {
  const r = await receiver((_, res) => (r.requests.length === 1 ? res.writeHead(500).end("database is down\n  try later") : res.writeHead(202).end()));
  await webhookSubscription(db.sql, "o_500", "o1.**", { url: `${r.origin}/x` });
  // The retry may come within milliseconds (full jitter): read the first outcome as it was written.
  const outcomes = await recordOutcomes(db.sql, "o_500");
  await emitEvents(db.sql, "o1.created");
  const failed = await waitFor(async () => (await outcomes())[0], "the first attempt to fail");
  assert.equal(failed.attempts, 1);
  assert.equal(failed.status, "retrying");
  assert.equal(failed.last_status, 500);
  assert.equal(failed.last_error, "HTTP 500: database is down try later");
  const done = await firstDelivery("o_500", (d) => d.status === "delivered", "the retry to deliver");
  assert.equal(done.attempts, 2);
  assert.equal(done.last_status, 202);
  assert.equal(done.last_error, null);
});

test("Retry-After in seconds sets next_attempt_at that far after the attempt", async () => {
  const r = await receiver((_, res) => res.writeHead(503, { "Retry-After": "120" }).end());
  await webhookSubscription(db.sql, "o_ra_seconds", "o2.**", { url: `${r.origin}/x` });
  await emitEvents(db.sql, "o2.created");
  const d = await firstDelivery("o_ra_seconds", (x) => x.status === "retrying", "the attempt to be recorded");
  assert.equal(d.next_attempt_at.getTime() - d.updated_at.getTime(), 120_000);
  assert.equal(d.last_status, 503);
});

test("Retry-After as an HTTP date is honoured, and a wait beyond an hour is capped at one hour", async () => {
  const dateReceiver = await receiver((_, res) =>
    res.writeHead(429, { "Retry-After": new Date(Date.now() + 300_000).toUTCString() }).end("slow down"),
  );
  const farReceiver = await receiver((_, res) => res.writeHead(503, { "Retry-After": "86400" }).end());
  await webhookSubscription(db.sql, "o_ra_date", "o3.**", { url: `${dateReceiver.origin}/x` });
  await webhookSubscription(db.sql, "o_ra_far", "o3.**", { url: `${farReceiver.origin}/x` });
  await emitEvents(db.sql, "o3.created");
  const dated = await firstDelivery("o_ra_date", (x) => x.status === "retrying", "the 429 to be recorded");
  const wait = dated.next_attempt_at.getTime() - dated.updated_at.getTime();
  assert.ok(wait > 297_000 && wait <= 300_000, `waits until the date (${wait} ms)`);
  assert.equal(dated.last_status, 429);
  const far = await firstDelivery("o_ra_far", (x) => x.status === "retrying", "the capped 503 to be recorded");
  assert.equal(far.next_attempt_at.getTime() - far.updated_at.getTime(), 3_600_000);
});

test("a 400 goes dead at once, with the status and a short, truncated start of the body", async () => {
  const r = await receiver((_, res) => res.writeHead(400).end(`invalid payload: field "email" ${"x".repeat(10_000)}`));
  await webhookSubscription(db.sql, "o_400", "o4.**", { url: `${r.origin}/x` });
  await emitEvents(db.sql, "o4.created");
  const d = await firstDelivery("o_400", (x) => x.status === "dead", "the delivery to go dead");
  assert.equal(d.attempts, 1, "not retried");
  assert.equal(d.last_status, 400);
  assert.ok(d.last_error!.startsWith('HTTP 400: invalid payload: field "email" xxx'), d.last_error!);
  assert.ok(d.last_error!.length <= 220, `truncated (${d.last_error!.length} characters)`);
  assert.equal(r.requests.length, 1);
});

const statusTable: Array<[status: number, outcome: "retrying" | "dead"]> = [
  [408, "retrying"], [409, "retrying"], [423, "retrying"], [425, "retrying"], [429, "retrying"],
  [500, "retrying"], [502, "retrying"], [503, "retrying"], [504, "retrying"],
  [400, "dead"], [401, "dead"], [403, "dead"], [404, "dead"], [405, "dead"], [413, "dead"], [415, "dead"], [422, "dead"],
];

test("after one attempt, 408, 409, 423, 425, 429 and 5xx are retrying and other 4xx are dead", async () => {
  const r = await receiver((request, res) => res.writeHead(Number(request.path.slice(1))).end());
  for (const [status] of statusTable) await webhookSubscription(db.sql, `o_status_${status}`, "o5.**", { url: `${r.origin}/${status}` });
  await emitEvents(db.sql, "o5.created");
  for (const [status, outcome] of statusTable) {
    // A retried status may already be on its next attempt when it is looked at (the first
    // backoff is a random wait of up to 2 s): any recorded attempt shows its outcome.
    const d = await firstDelivery(`o_status_${status}`, (x) => x.attempts >= 1 && x.status !== "delivering" && x.status !== "pending", `the ${status} to be recorded`);
    assert.equal(d.status, outcome, `HTTP ${status}`);
    assert.equal(d.last_status, status);
  }
});

test("410 Gone: the delivery is dead and the subscription deactivated, saying why in its status", async () => {
  const r = await receiver((_, res) => res.writeHead(410).end("this endpoint was removed"));
  await webhookSubscription(db.sql, "o_410", "o6.**", { url: `${r.origin}/x` });
  await emitEvents(db.sql, "o6.created");
  const d = await firstDelivery("o_410", (x) => x.status === "dead", "the 410 to be recorded");
  assert.equal(d.last_status, 410);
  const [status] = await waitFor(async () => {
    const rows = await db.sql<{ active: boolean; disabled_reason: string | null }[]>`
      select active, disabled_reason from outbox.subscription_status where subscription = 'o_410'`;
    return rows[0] && !rows[0].active ? rows : undefined;
  }, "the subscription to be deactivated");
  assert.match(status!.disabled_reason!, /410 Gone/);
  assert.match(status!.disabled_reason!, /update outbox\.subscriptions set active = true where name = 'o_410'/, "says how to re-activate");
  await emitEvents(db.sql, "o6.created");
  await worker!.then((w) => w.worker.kick());
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.equal((await webhookDeliveries(db.sql, "o_410")).length, 1, "an inactive subscription gets no new deliveries");
  assert.equal(r.requests.length, 1);
});

test("redirects are not followed: a 302 is dead with a message pointing at the final URL, and the target never hears of it", async () => {
  const target = await receiver();
  const r = await receiver((_, res) => res.writeHead(302, { Location: `${target.origin}/moved?token=sekrit-query-token` }).end());
  await webhookSubscription(db.sql, "o_302", "o7.**", { url: `${r.origin}/old` });
  await emitEvents(db.sql, "o7.created");
  const d = await firstDelivery("o_302", (x) => x.status === "dead", "the redirect to be recorded");
  assert.equal(d.last_status, 302);
  assert.equal(d.last_error, `HTTP 302 redirect to ${target.origin}/moved: redirects are not followed; point the subscription at the final URL`);
  assert.equal(target.requests.length, 0);
});

test("a server that never answers: the attempt is aborted after timeout_ms and retried, while another subscription keeps delivering", async () => {
  let closedAt = 0;
  const silent = await receiver((_, _res, raw) => raw.socket.once("close", () => (closedAt = Date.now())));
  const fast = await receiver();
  await webhookSubscription(db.sql, "o_silent", "o8.slow", { url: `${silent.origin}/x`, timeout_ms: 1500 });
  await webhookSubscription(db.sql, "o_fast", "o8.fast", { url: `${fast.origin}/x` });
  await emitEvents(db.sql, "o8.slow");
  await waitFor(async () => silent.requests.length === 1, "the silent server to get its request");
  const sentAt = silent.requests[0]!.at;
  for (let i = 0; i < 20; i++) await emitEvents(db.sql, "o8.fast");
  await waitFor(async () => {
    const rows = await webhookDeliveries(db.sql, "o_fast");
    return rows.length === 20 && rows.every((x) => x.status === "delivered");
  }, "the other subscription's 20 events to be delivered");
  const [stuck] = await webhookDeliveries(db.sql, "o_silent");
  assert.equal(stuck!.status, "delivering", "all that while the silent endpoint's attempt was still open");

  const d = await firstDelivery("o_silent", (x) => x.status === "retrying", "the attempt to time out");
  assert.equal(d.last_error, "timed out after 1500 ms without an answer");
  assert.equal(d.last_status, null);
  await waitFor(async () => closedAt > 0, "the connection to be closed");
  const open = closedAt - sentAt;
  assert.ok(open >= 1400 && open < 5000, `the request was really aborted after about 1500 ms (${open} ms)`);
});

test("the response body is read only up to a bound: a 10 MB error body does not hold the attempt", async () => {
  let written = 0;
  const total = 10 * 1024 * 1024;
  const r = await receiver((_, res) => {
    res.writeHead(500, { "Content-Type": "text/plain" });
    const chunk = Buffer.alloc(64 * 1024, "e");
    const pump = () => {
      while (written < total) {
        written += chunk.length;
        if (!res.write(chunk)) return void res.once("drain", pump);
      }
      res.end();
    };
    res.on("close", () => undefined);
    pump();
  });
  await webhookSubscription(db.sql, "o_big", "o9.**", { url: `${r.origin}/x` });
  await emitEvents(db.sql, "o9.created");
  const d = await firstDelivery("o_big", (x) => x.status === "retrying", "the attempt to be recorded");
  assert.equal(d.last_status, 500);
  assert.equal(d.last_error, `HTTP 500: ${"e".repeat(200)}`);
  assert.ok(written < total, `the receiver could not send the whole body (${written} of ${total} bytes)`);
});

test("no secret, signature or credential lands in outbox.deliveries or in the logs, even from a receiver that echoes the request", async () => {
  const secrets = [testSecret("echo-one"), testSecret("echo-two", 32)];
  const authorization = "Bearer echo-credential-123456";
  const token = "query-token-abcdef";
  const r = await receiver((request, res) =>
    res.writeHead(r.requests.length === 1 ? 500 : 400).end(JSON.stringify({ youSent: request.headers, url: request.path })),
  );
  await webhookSubscription(db.sql, "o_echo", "o10.**", {
    url: `${r.origin}/hook?token=${token}`,
    secret: secrets.join(" "),
    headers: { Authorization: authorization },
  });
  await emitEvents(db.sql, "o10.created");
  const d = await firstDelivery("o_echo", (x) => x.status === "dead", "the echoing receiver's 400 to be recorded", 15_000);
  assert.match(d.last_error!, /\[redacted\]/, "the echo reached last_error, redacted");
  const signatures = r.requests.flatMap((q) => String(q.headers["webhook-signature"]).split(" ").map((s) => s.slice(3)));
  assert.equal(signatures.length, 4, "two attempts, two signatures each");
  const forbidden = [...secrets, ...secrets.map((s) => s.slice(6)), ...signatures, authorization, "echo-credential-123456", token];

  const stored = (await db.sql<{ row: string }[]>`
    select row_to_json(d)::text as row from outbox.deliveries d where subscription = 'o_echo'
    union all select row_to_json(s)::text from outbox.subscription_status s where subscription = 'o_echo'`).map((x) => x.row).join("\n");
  const w = await worker!;
  const logs = w.logs.join("");
  assert.ok(logs.includes("o_echo"), "the logs do mention the subscription's failures");
  for (const value of forbidden) {
    assert.ok(!stored.includes(value), `outbox.deliveries holds ${value.slice(0, 12)}…`);
    assert.ok(!logs.includes(value), `the logs hold ${value.slice(0, 12)}…`);
  }
});

test("keep-alive: consecutive requests to one endpoint reuse a connection", async () => {
  const r = await receiver();
  await webhookSubscription(db.sql, "o_keepalive", "o11.**", { url: `${r.origin}/x`, concurrency: 1 });
  for (let i = 0; i < 30; i++) await emitEvents(db.sql, "o11.created");
  await waitFor(async () => {
    const rows = await webhookDeliveries(db.sql, "o_keepalive");
    return rows.length === 30 && rows.every((x) => x.status === "delivered");
  }, "30 deliveries");
  assert.equal(r.requests.length, 30);
  assert.equal(r.maxInFlight, 1, "concurrency 1: one request at a time");
  assert.ok(r.connections <= 2, `30 requests over ${r.connections} connection(s)`);
});
