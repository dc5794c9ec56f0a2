/**
 * Typed topics: `createOutbox<TopicMap>()` makes `emit` check the data of mapped topics and
 * `handle` type `event.data` on them, while other topics and patterns stay allowed with
 * `unknown` data. The type checks below are compiled by `npm run typecheck` (this file is
 * part of it, and CI runs it): each `@ts-expect-error` fails the build if the error it
 * expects goes away, and each `Equal` assignment if a type changes. The run-time test holds
 * real events against those types.
 */
import assert from "node:assert/strict";
import { after, test } from "node:test";
import type { EmittedEvent } from "../src/emittedEvent.js";
import { createOutbox, type Outbox } from "../src/outbox.js";
import type { OutboxEvent } from "../src/transports/transport.js";
import { testWorkerOptions } from "./deliveryHelpers.js";
import { useTestDatabase, waitFor } from "./harness.js";
import type { OutboxWorker } from "../src/worker/worker.js";

const db = useTestDatabase();

type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;

/** The app's topics. */
type ShopTopics = {
  "order.placed": { orderId: string; total: number; lines: { sku: string; quantity: number }[] };
  "order.cancelled": { orderId: string; reason: string | null };
};

/**
 * Compile-time checks only: never called (an outbox on no database would not get far), but
 * compiled with the rest of the tests.
 */
function typeChecks(outbox: Outbox<ShopTopics>, plain: Outbox): void {
  const sql = outbox.sql;
  void outbox.emit(sql, "order.placed", { orderId: "o-1", total: 12.5, lines: [{ sku: "A", quantity: 2 }] });
  // @ts-expect-error a mapped topic's data must have its type: orderId is missing
  void outbox.emit(sql, "order.placed", { total: 12.5, lines: [] });
  // @ts-expect-error a mapped topic's data must have its type: total is a number
  void outbox.emit(sql, "order.placed", { orderId: "o-1", total: "12.50", lines: [] });
  // @ts-expect-error a mapped topic's data has no properties beyond its type
  void outbox.emit(sql, "order.cancelled", { orderId: "o-1", reason: null, refund: true });
  // Topics the map lacks take any data, as without a map.
  void outbox.emit(sql, "audit.note", { anything: [1, "two"] });
  void outbox.emit(sql, "audit.note", 42);
  const dynamic: string = "order.placed";
  void outbox.emit(sql, dynamic, "a topic only known at run time takes any data");
  void plain.emit(sql, "order.placed", { whatever: true });

  outbox.handle("placed", "order.placed", (event) => {
    const typed: Equal<typeof event, EmittedEvent<"order.placed", ShopTopics["order.placed"]>> = true;
    const orderId: string = event.data.orderId;
    const quantity: number | undefined = event.data.lines[0]?.quantity;
    // @ts-expect-error data has only the mapped type's properties
    void event.data.customer;
    void [typed, orderId, quantity];
  });
  outbox.handle("cancelled", "order.cancelled", (event) => {
    const reason: string | null = event.data.reason;
    const type: "order.cancelled" = event.type;
    void [reason, type];
  });
  // A pattern, a topic the map lacks, and an outbox without a map: the general envelope.
  outbox.handle("orders", "order.*", (event) => {
    const general: Equal<typeof event, OutboxEvent> = true;
    const data: unknown = event.data;
    void [general, data];
  });
  outbox.handle("users", "public.users.insert", (event) => {
    const general: Equal<typeof event, OutboxEvent> = true;
    void general;
  });
  plain.handle("placed-untyped", "order.placed", (event) => {
    const general: Equal<typeof event, OutboxEvent> = true;
    void general;
  });
  // An explicit event type still wins (as with InferCaptureEvent).
  outbox.handle<{ type: string; custom: true }>("explicit", "order.placed", (event) => {
    const custom: true = event.custom;
    void custom;
  });
  const pattern: string = "order.placed";
  outbox.handle("dynamic", pattern, (event) => {
    const general: Equal<typeof event, OutboxEvent> = true;
    void general;
  });
}
void typeChecks;

let outbox: Outbox<ShopTopics> | undefined;
let worker: OutboxWorker | undefined;
after(async () => {
  await worker?.stop();
  await outbox?.close();
});

test("a handler on a mapped topic receives the data emit was given, in the shape its type promises", async () => {
  outbox = createOutbox<ShopTopics>({ connectionString: db.url, worker: testWorkerOptions });
  const received: EmittedEvent<"order.placed", ShopTopics["order.placed"]>[] = [];
  outbox.handle("typed-placed", "order.placed", (event) => {
    received.push(event);
  });
  worker = await outbox.start();
  const placed: ShopTopics["order.placed"] = { orderId: "o-1", total: 12.5, lines: [{ sku: "A", quantity: 2 }] };
  const id = await outbox.sql.begin((tx) => outbox!.emit(tx, "order.placed", placed, { key: "o-1" }));
  await outbox.emit(outbox.sql, "order.cancelled", { orderId: "o-1", reason: null });

  const [event] = await waitFor(async () => received.length > 0 && received, "the handler to receive order.placed");
  assert.equal(received.length, 1, "only order.placed reaches the handler");
  assert.equal(event!.id, id);
  assert.equal(event!.type, "order.placed");
  assert.equal(event!.key, "o-1");
  assert.deepEqual(event!.data, placed);
  assert.equal(typeof event!.time, "string");
});
