import assert from "node:assert/strict";
import { after, test } from "node:test";
import { Webhook } from "standardwebhooks";
import { webhookBatchId } from "../src/transports/webhook.js";
import { useTestDatabase, waitFor } from "./harness.js";
import {
  emitEvents,
  startReceiver,
  startWebhookWorker,
  testSecret,
  webhookDeliveries,
  webhookSubscription,
  type Receiver,
  type ReceivedRequest,
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

/** The headers standardwebhooks reads, as plain strings. */
function signedHeaders(request: ReceivedRequest): Record<string, string> {
  const pick = (name: string) => String(request.headers[name] ?? "");
  return { "webhook-id": pick("webhook-id"), "webhook-timestamp": pick("webhook-timestamp"), "webhook-signature": pick("webhook-signature") };
}

async function delivered(subscription: string, count = 1) {
  return waitFor(async () => {
    const rows = await webhookDeliveries(db.sql, subscription);
    return rows.length === count && rows.every((r) => r.status === "delivered") ? rows : undefined;
  }, `${count} deliveries of ${subscription} to be delivered`);
}

test("one event is POSTed as its envelope, signed per Standard Webhooks: the standardwebhooks verifier accepts it and webhook-id is the event id", async () => {
  const secret = testSecret("sign-one");
  const r = await receiver();
  await webhookSubscription(db.sql, "s_one", "s1.**", { url: `${r.origin}/hooks/one`, secret, headers: { Authorization: "Bearer token-for-s1" } });
  const [eventId] = await emitEvents(db.sql, "s1.created");
  const [row] = await delivered("s_one");
  assert.equal(r.requests.length, 1);
  const request = r.requests[0]!;
  assert.equal(request.method, "POST");
  assert.equal(request.path, "/hooks/one");
  assert.equal(request.headers["content-type"], "application/json");
  assert.equal(request.headers["user-agent"], "pg-outbox");
  assert.equal(request.headers.authorization, "Bearer token-for-s1", "configured headers are sent");
  assert.equal(request.headers["webhook-id"], eventId);
  assert.ok(Math.abs(Number(request.headers["webhook-timestamp"]) - Date.now() / 1000) < 60, "webhook-timestamp is now, in seconds");
  assert.match(String(request.headers["webhook-signature"]), /^v1,[A-Za-z0-9+/]+=*$/);

  const verified = new Webhook(secret).verify(request.body, signedHeaders(request)) as { id: string };
  const [stored] = await db.sql<{ payload: unknown }[]>`select payload from outbox.events where id = ${eventId!}`;
  assert.deepEqual(verified, stored!.payload, "the body is the stored envelope");
  assert.equal(verified.id, eventId);
  assert.equal(row!.last_status, 204, "the status of the last attempt is recorded");
  assert.throws(() => new Webhook(secret).verify(`${request.body} `, signedHeaders(request)), /No matching signature/, "a changed body does not verify");
});

test("during rotation a request carries one signature per secret, and a verifier that knows only one of them accepts it", async () => {
  const oldSecret = testSecret("old-key");
  const newSecret = testSecret("new-key", 32);
  const r = await receiver();
  await webhookSubscription(db.sql, "s_rot", "s2.**", { url: `${r.origin}/rot`, secret: `${oldSecret} ${newSecret}` });
  await emitEvents(db.sql, "s2.created");
  await delivered("s_rot");
  const request = r.requests[0]!;
  assert.equal(String(request.headers["webhook-signature"]).split(" ").length, 2, "two signatures, space-separated");
  assert.doesNotThrow(() => new Webhook(oldSecret).verify(request.body, signedHeaders(request)), "the old secret verifies");
  assert.doesNotThrow(() => new Webhook(newSecret).verify(request.body, signedHeaders(request)), "the new secret verifies");
  assert.throws(() => new Webhook(testSecret("other")).verify(request.body, signedHeaders(request)), /No matching signature/);
});

test("a retried event carries the same webhook-id on every attempt, and every attempt verifies", async () => {
  const secret = testSecret("retry");
  const r = await receiver((_, res) => (r.requests.length === 1 ? res.writeHead(500).end("try again") : res.writeHead(200).end()));
  await webhookSubscription(db.sql, "s_retry", "s3.**", { url: `${r.origin}/retry`, secret });
  const [eventId] = await emitEvents(db.sql, "s3.created");
  const [row] = await delivered("s_retry");
  assert.equal(row!.attempts, 2);
  assert.equal(r.requests.length, 2);
  for (const request of r.requests) {
    assert.equal(request.headers["webhook-id"], eventId);
    assert.doesNotThrow(() => new Webhook(secret).verify(request.body, signedHeaders(request)));
  }
  assert.equal(r.requests[0]!.body, r.requests[1]!.body, "the same body on every attempt");
});

test("batch_size 5: five events are one request carrying a JSON array, with webhook-id batch_<hash of their ids> and a signature that verifies", async () => {
  const secret = testSecret("batch");
  const r = await receiver();
  await webhookSubscription(db.sql, "s_batch", "s4.**", { url: `${r.origin}/batch`, secret, batch_size: 5 });
  const ids = await emitEvents(db.sql, "s4.created", 5);
  await delivered("s_batch", 5);
  assert.equal(r.requests.length, 1, "one request for the five events");
  const request = r.requests[0]!;
  const events = new Webhook(secret).verify(request.body, signedHeaders(request)) as Array<{ id: string; data: { n: number } }>;
  assert.ok(Array.isArray(events));
  assert.deepEqual(events.map((e) => e.id), ids, "the events in commit order");
  assert.deepEqual(events.map((e) => e.data.n), [1, 2, 3, 4, 5]);
  assert.match(String(request.headers["webhook-id"]), /^batch_[0-9a-f]{32}$/);
  assert.equal(request.headers["webhook-id"], webhookBatchId(ids));
});

test("a batch that fails and is retried carries the same events and the same webhook-id", async () => {
  const secret = testSecret("batch-retry");
  const r = await receiver((_, res) => (r.requests.length === 1 ? res.writeHead(503).end() : res.writeHead(204).end()));
  await webhookSubscription(db.sql, "s_batch_retry", "s5.**", { url: `${r.origin}/batch-retry`, secret, batch_size: 3 });
  const ids = await emitEvents(db.sql, "s5.created", 3);
  const rows = await delivered("s_batch_retry", 3);
  assert.ok(rows.every((d) => d.attempts === 2), "each event was attempted twice, in the same batch");
  assert.equal(r.requests.length, 2);
  const [first, second] = r.requests as [ReceivedRequest, ReceivedRequest];
  assert.equal(first.headers["webhook-id"], second.headers["webhook-id"]);
  assert.equal(first.headers["webhook-id"], webhookBatchId(ids));
  assert.equal(first.body, second.body);
  assert.doesNotThrow(() => new Webhook(secret).verify(second.body, signedHeaders(second)));
});

test("a webhook without a secret is sent unsigned, still with webhook-id and webhook-timestamp", async () => {
  const r = await receiver();
  await webhookSubscription(db.sql, "s_plain", "s6.**", { url: `${r.origin}/plain` });
  const [eventId] = await emitEvents(db.sql, "s6.created");
  await delivered("s_plain");
  const request = r.requests[0]!;
  assert.equal(request.headers["webhook-id"], eventId);
  assert.ok(request.headers["webhook-timestamp"]);
  assert.equal(request.headers["webhook-signature"], undefined);
});
