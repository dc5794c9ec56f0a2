/**
 * `InferCaptureEvent<typeof table>`: the types it derives from a drizzle table match what
 * capture events carry at run time. The type checks are compiled by `npm run typecheck`
 * (this file is part of it); the run-time checks hold real events against them.
 */
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { bigint, boolean, jsonb, numeric, pgTable, text, timestamp } from "drizzle-orm/pg-core";
import type { CaptureEventRow, CaptureTopic, InferCaptureEvent } from "../src/inferCaptureEvent.js";
import { createOutbox, type Outbox } from "../src/outbox.js";
import { useTestDatabase } from "./harness.js";

const db = useTestDatabase();
let outbox: Outbox | undefined;
after(async () => {
  await outbox?.close();
});

const typedOrders = pgTable("typed_orders", {
  id: bigint("id", { mode: "number" }).primaryKey(),
  customerEmail: text("customer_email").notNull(),
  total: numeric("total", { precision: 12, scale: 2 }).notNull(),
  paidAt: timestamp("paid_at", { withTimezone: true }),
  meta: jsonb("meta").$type<{ source: string }>(),
  secret: text("secret"),
  flag: boolean(),
});

type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
type OrderEvent = InferCaptureEvent<typeof typedOrders, "insert" | "update" | "delete", "secret">;

// Column names as the database has them (not the TypeScript property names), excluded ones left out.
const rowKeys: Equal<keyof CaptureEventRow<typeof typedOrders, "secret">, "id" | "customer_email" | "total" | "paid_at" | "meta" | "flag"> = true;
// Values as to_json renders them: numeric is a number, timestamps are strings, jsonb keeps its declared type.
const rowTypes: Equal<
  CaptureEventRow<typeof typedOrders, "secret">,
  { id: number; customer_email: string; total: number; paid_at: string | null; meta: { source: string } | null; flag: boolean | null }
> = true;
const topic: Equal<CaptureTopic<typeof typedOrders, "update">, "public.typed_orders.update"> = true;

test("capture events of a drizzle table have the shape InferCaptureEvent gives them", async () => {
  assert.ok(rowKeys && rowTypes && topic);
  outbox = createOutbox({ connectionString: db.url });
  await db.sql`create table typed_orders (id bigint primary key, customer_email text not null, total numeric(12, 2) not null,
                paid_at timestamptz, meta jsonb, secret text, flag boolean)`;
  await outbox.enableCapture("typed_orders", { excludeColumns: ["secret"] });
  const events = await outbox.captureEvents(async () => {
    await db.sql`insert into typed_orders values (1, 'ada@x', 12.50, null, '{"source": "web"}', 's3cret', true)`;
    await db.sql`update typed_orders set paid_at = '2026-12-01T10:00:00Z', total = 13 where id = 1`;
    await db.sql`delete from typed_orders where id = 1`;
  });
  const typed = events.ofType("public.typed_orders.*") as unknown as OrderEvent[];
  assert.deepEqual(typed.map((e) => e.op), ["insert", "update", "delete"]);

  for (const event of typed) {
    if (event.op === "insert") {
      const total: number = event.new.total;
      const email: string = event.new.customer_email;
      const source: string | undefined = event.new.meta?.source;
      assert.equal(total, 12.5);
      assert.equal(email, "ada@x");
      assert.equal(source, "web");
      assert.equal(event.new.paid_at, null);
      assert.equal(event.new.flag, true);
      assert.equal(event.old, null);
      assert.equal(event.type, "public.typed_orders.insert");
      assert.deepEqual(Object.keys(event.new).sort(), ["customer_email", "flag", "id", "meta", "paid_at", "total"]);
      // @ts-expect-error excluded columns are not in the type (nor in the event)
      assert.equal(event.new.secret, undefined);
      // @ts-expect-error the TypeScript property name is not what the event carries
      assert.equal(event.new.customerEmail, undefined);
    } else if (event.op === "update") {
      const changed: Array<"id" | "customer_email" | "total" | "paid_at" | "meta" | "flag"> = event.changed;
      assert.deepEqual(changed, ["paid_at", "total"]);
      const paidAt: string | null = event.new.paid_at;
      assert.equal(typeof paidAt, "string");
      assert.equal(Date.parse(paidAt!), Date.parse("2026-12-01T10:00:00Z"));
      assert.equal(event.old.total, 12.5);
      assert.equal(event.new.total, 13);
    } else {
      assert.equal(event.new, null);
      assert.equal(event.old.id, 1);
      assert.deepEqual(event.key, { id: 1 });
    }
  }
});
