/**
 * Partitioned tables: capture is enabled on the partitioned table and covers every
 * partition, present and future, whichever table a statement names. Events name the captured
 * partitioned table (its topic is what subscriptions match), not the partition holding the row.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { capturedEvents } from "./capturedEvents.js";
import { useTestDatabase } from "./harness.js";

const db = useTestDatabase();

const eventsOf = (schema: string) => capturedEvents(db.sql, schema);

/** A list-partitioned table `<schema>.measurements` with partitions eu and us, captured. */
async function partitioned(schema: string, options = ""): Promise<void> {
  await db.sql.unsafe(`
    create schema ${schema};
    create table ${schema}.measurements (id int, region text, value numeric, note json, primary key (id, region))
      partition by list (region);
    create table ${schema}.measurements_eu partition of ${schema}.measurements for values in ('eu');
    create table ${schema}.measurements_us partition of ${schema}.measurements for values in ('us');
    select outbox.enable_capture('${schema}.measurements'${options ? `, ${options}` : ""});`);
}

async function health(schema: string): Promise<string> {
  const [row] = await db.sql<{ health: string }[]>`
    select health from outbox.captures where schema_name = ${schema} and table_name = 'measurements'`;
  assert.ok(row, "the partitioned table is in outbox.captures");
  return row.health;
}

test("writes through the parent and straight into a partition are each captured exactly once", async () => {
  await partitioned("part_writes");
  await db.sql.unsafe(`
    insert into part_writes.measurements values (1, 'eu', 1.5, '{"a": 1}'), (2, 'us', 2.5, null);
    insert into part_writes.measurements_eu values (3, 'eu', 3.5, '[]');
    update part_writes.measurements set value = value + 1 where id = 1;
    update part_writes.measurements_us set value = value + 1, note = '{"b": 2}';
    update part_writes.measurements_us set note = note;
    delete from part_writes.measurements where id = 3;
    delete from part_writes.measurements_us;`);
  const events = await eventsOf("part_writes");
  assert.deepEqual(
    events.map((e) => [e.op, e.key]),
    [
      ["insert", { id: 1, region: "eu" }],
      ["insert", { id: 2, region: "us" }],
      ["insert", { id: 3, region: "eu" }],
      ["update", { id: 1, region: "eu" }],
      ["update", { id: 2, region: "us" }],
      ["delete", { id: 3, region: "eu" }],
      ["delete", { id: 2, region: "us" }],
    ],
    "one event per row change, no duplicates, none missing; `set note = note` on json changes nothing",
  );
  for (const e of events) {
    assert.equal(e.topic, `part_writes.measurements.${e.op}`, "the topic names the captured partitioned table");
    assert.equal(e.schema_name, "part_writes");
    assert.equal(e.table_name, "measurements");
  }
  assert.deepEqual(events[4]!.payload.changed, ["note", "value"]);
  assert.deepEqual(events[4]!.payload.new, { id: 2, region: "us", value: 3.5, note: { b: 2 } });
  assert.equal(await health("part_writes"), "ok");
});

test("a partition created or attached after enable_capture is captured too", async () => {
  await partitioned("part_later", "exclude_columns => '{note}'");
  await db.sql.unsafe(`
    create table part_later.measurements_asia partition of part_later.measurements for values in ('asia');
    create table part_later.measurements_sa (like part_later.measurements including all);
    alter table part_later.measurements attach partition part_later.measurements_sa for values in ('sa');
    insert into part_later.measurements values (1, 'asia', 1, '{}'), (2, 'sa', 2, '{}');
    insert into part_later.measurements_asia values (3, 'asia', 3, '{}');
    insert into part_later.measurements_sa values (4, 'sa', 4, '{}');
    update part_later.measurements_sa set value = 5 where id = 4;`);
  const events = await eventsOf("part_later");
  assert.deepEqual(
    events.map((e) => [e.topic, e.key]),
    [
      ["part_later.measurements.insert", { id: 1, region: "asia" }],
      ["part_later.measurements.insert", { id: 2, region: "sa" }],
      ["part_later.measurements.insert", { id: 3, region: "asia" }],
      ["part_later.measurements.insert", { id: 4, region: "sa" }],
      ["part_later.measurements.update", { id: 4, region: "sa" }],
    ],
  );
  assert.ok(events.every((e) => !("note" in e.payload.new!)), "the capture's options apply to new partitions");
  assert.equal(await health("part_later"), "ok");
});

test("enable_capture on a partition is refused with a message naming the partitioned table", async () => {
  await partitioned("part_refuse");
  await assert.rejects(
    db.sql`select outbox.enable_capture('part_refuse.measurements_eu')`,
    (error: Error & { code?: string; hint?: string }) => {
      assert.equal(error.code, "42809");
      assert.match(error.message, /part_refuse\.measurements_eu is a partition of part_refuse\.measurements$/);
      assert.match(String(error.hint), /part_refuse\.measurements/);
      return true;
    },
  );
  const captures = await db.sql`select table_name from outbox.captures where schema_name = 'part_refuse'`;
  assert.deepEqual(
    captures.map((c) => c.table_name),
    ["measurements"],
    "nothing installed on the partition",
  );
});

test("an UPDATE that moves a row to another partition is a delete and an insert", async () => {
  // PostgreSQL runs a cross-partition UPDATE as a DELETE from one partition and an INSERT
  // into the other, and fires AFTER DELETE and AFTER INSERT row triggers, not AFTER UPDATE.
  await partitioned("part_move");
  await db.sql.unsafe(`
    insert into part_move.measurements values (1, 'eu', 1, null), (2, 'eu', 2, null);
    update part_move.measurements set region = 'us', value = 10 where id = 1;
    update part_move.measurements_eu set value = 20 where id = 2;`);
  const events = await eventsOf("part_move");
  assert.deepEqual(
    events.map((e) => [e.op, e.key]),
    [
      ["insert", { id: 1, region: "eu" }],
      ["insert", { id: 2, region: "eu" }],
      ["delete", { id: 1, region: "eu" }],
      ["insert", { id: 1, region: "us" }],
      ["update", { id: 2, region: "eu" }],
    ],
  );
  assert.deepEqual(events[2]!.payload.old, { id: 1, region: "eu", value: 1, note: null });
  assert.deepEqual(events[3]!.payload.new, { id: 1, region: "us", value: 10, note: null });
  assert.ok(events.every((e) => e.table_name === "measurements"));
  assert.equal(await health("part_move"), "ok");
});

test("health reports a capture trigger disabled on one partition", async () => {
  // Writes to that partition would bypass capture: health must not say ok.
  await partitioned("part_health");
  assert.equal(await health("part_health"), "ok");
  await db.sql.unsafe(`alter table part_health.measurements_us disable trigger outbox_capture`);
  assert.match(await health("part_health"), /outbox_capture is disabled on partition part_health\.measurements_us/);
  await db.sql.unsafe(`alter table part_health.measurements_us enable trigger outbox_capture`);
  assert.equal(await health("part_health"), "ok");
});
