/**
 * The demo's webhook receiver (`outbox demo-receiver`, and the one `outbox demo` runs) over
 * real HTTP: it takes requests pg-outbox signs, refuses forged and stale ones, fails a chosen
 * event's first attempt, and answers its healthcheck.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { startDemoReceiver, type DemoReceiver } from "../src/cli/demoReceiver.js";
import { webhookSignature } from "../src/transports/webhook.js";

const secret = `whsec_${Buffer.from("the demo receiver's test secret").toString("base64")}`;
const lines: string[] = [];
let receiver: DemoReceiver;

before(async () => {
  receiver = await startDemoReceiver({
    port: 0,
    host: "127.0.0.1",
    secret,
    failFirstAttempt: (event) => event.type === "order.flaky",
    print: (line) => lines.push(line),
  });
});
after(() => receiver.close());

/** POSTs `body` as pg-outbox would, signed with `signingSecret`, `ageSeconds` old. */
function post(body: string, options: { signingSecret?: string; ageSeconds?: number; id?: string } = {}): Promise<Response> {
  const id = options.id ?? "evt-1";
  const timestamp = Math.floor(Date.now() / 1000) - (options.ageSeconds ?? 0);
  return fetch(`${receiver.url}/hooks`, {
    method: "POST",
    body,
    headers: {
      "content-type": "application/json",
      "webhook-id": id,
      "webhook-timestamp": String(timestamp),
      "webhook-signature": webhookSignature(options.signingSecret ?? secret, id, timestamp, body),
    },
  });
}

test("the demo receiver takes signed events (single and batched), prints them, and answers GET /healthz", async () => {
  const single = JSON.stringify({ id: "e1", type: "order.placed", key: "o-1", data: {} });
  assert.equal((await post(single)).status, 204);
  const batch = JSON.stringify([
    { id: "e2", type: "order.placed", key: "o-2", data: {} },
    { id: "e3", type: "order.cancelled", key: "o-2", data: {} },
  ]);
  assert.equal((await post(batch, { id: "batch_1" })).status, 204);
  assert.deepEqual(receiver.received.map((e) => e.id), ["e1", "e2", "e3"]);
  assert.match(lines.join("\n"), /webhook got order\.cancelled key="o-2" \(webhook-id batch_1, signature ok\)/);
  const health = await fetch(`${receiver.url}/healthz`);
  assert.equal(health.status, 200);
});

test("the demo receiver refuses a forged signature, a stale timestamp and a body that is not JSON", async () => {
  const before = receiver.received.length;
  const body = JSON.stringify({ id: "e9", type: "order.placed", data: {} });
  const forged = await post(body, { signingSecret: `whsec_${Buffer.from("somebody else's secret!").toString("base64")}` });
  assert.equal(forged.status, 401);
  assert.match(await forged.text(), /signature does not match/);
  const stale = await post(body, { ageSeconds: 10 * 60 });
  assert.equal(stale.status, 401);
  assert.match(await stale.text(), /timestamp/);
  assert.equal((await post("not json")).status, 400);
  assert.equal(receiver.received.length, before);
});

test("the demo receiver answers 503 to the first attempt of an event it is told to fail, then takes it", async () => {
  const body = JSON.stringify({ id: "flaky-1", type: "order.flaky", data: {} });
  assert.equal((await post(body)).status, 503);
  assert.equal((await post(body)).status, 204);
  assert.equal(receiver.received.filter((e) => e.id === "flaky-1").length, 1);
});
