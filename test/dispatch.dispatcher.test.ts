/**
 * The dispatcher's own connection: a query that gets no answer in time makes it give up the
 * connection (and the dispatcher role with it) and carry on with a new one, instead of waiting
 * forever (postgres.js can leave a query unsettled after a connection is cut).
 */
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { Dispatcher } from "../src/dispatch/dispatcher.js";
import { NoAnswerError } from "../src/errors.js";
import { silentLogger } from "../src/logger.js";
import { capturedTable, dispatchRoundStats } from "./deliveryHelpers.js";
import { useTestDatabase, waitFor } from "./harness.js";

const dispatchers: Dispatcher[] = [];
after(async () => {
  for (const d of dispatchers) await d.stop().catch(() => undefined);
});
const db = useTestDatabase();

test("a dispatch round without an answer is abandoned: the connection and the role are given up, and the next round runs on a new connection", async () => {
  await capturedTable(db.sql, "stuck_events");
  await db.sql`insert into outbox.subscriptions (name, pattern, kind, config) values ('stuck', 'public.stuck_events.*', 'notify', '{"channel": "stuck"}')`;
  const dispatcher = new Dispatcher({ connectionString: db.url, logger: silentLogger(), answerWithinMs: 300 });
  dispatchers.push(dispatcher);
  const warmup = await dispatcher.runUntilCaughtUp();
  assert.ok(warmup, "took the dispatcher role");

  // Hold the dispatch state row, so that the next round waits on it and gets no answer.
  const holder = await db.sql.reserve();
  try {
    await holder`begin`;
    await holder`select 1 from outbox._dispatch_state where id = 1 for update`;
    await db.sql`insert into stuck_events (id) values (1)`;
    const started = Date.now();
    await assert.rejects(dispatcher.runUntilCaughtUp(), NoAnswerError);
    assert.ok(Date.now() - started < 5000, "gave up after its deadline");
    // The old backend ends at its statement timeout; with it goes the advisory lock.
    await waitFor(
      async () => {
        const [{ n }] = await db.sql<{ n: number }[]>`
          select count(*)::int as n from pg_locks l join pg_database d on d.oid = l.database
          where l.locktype = 'advisory' and l.granted and d.datname = current_database()`;
        return n === 0;
      },
      "the abandoned session to release the dispatcher role",
      5000,
    );
  } finally {
    await holder`rollback`.catch(() => undefined);
    holder.release();
  }
  const round = await dispatcher.runUntilCaughtUp();
  assert.ok(round, "took the role again on a new connection");
  assert.equal(round.events, 1, "dispatched the event written while it was stuck");
  const [{ n }] = await db.sql<{ n: number }[]>`select count(*)::int as n from outbox.deliveries where subscription = 'stuck'`;
  assert.equal(n, 1);
});

test("guarantee 3: an event whose transaction took its id before a round and its transaction id after is read once it commits", async () => {
  await db.sql`insert into outbox.subscriptions (name, pattern, kind, config) values ('late_sub', 'late.*', 'notify', '{"channel": "late_sub"}')`;
  // emit's insert is its transaction's first write: the event id is taken, then the xid. This
  // default holds the transaction between the two while the test session holds a lock.
  await db.sql.unsafe(`
    create function public.test_held_xid() returns xid8 language plpgsql volatile as $$
    begin
      if current_setting('test.hold_xid', true) = 'on' then perform pg_advisory_xact_lock(7340001); end if;
      return pg_current_xact_id();
    end $$;
    alter table outbox._events alter column xid set default public.test_held_xid();`);
  const lock = await db.sql.reserve();
  const late = await db.sql.reserve();
  const conn = await db.sql.reserve();
  try {
    await lock`select pg_advisory_lock(7340001)`;
    await late`begin`;
    await late`set local test.hold_xid = 'on'`;
    const lateEmit = late`select outbox.emit('late.first', '{}')`.execute();
    await waitFor(
      async () => (await db.sql`select from pg_locks where locktype = 'advisory' and objid = 7340001 and not granted`).length === 1,
      "the late transaction to wait between taking its event id and its transaction id",
    );
    await db.sql`select outbox.emit('late.second', '{}')`; // a larger id, committed
    assert.equal((await dispatchRoundStats(conn, "late_sub")).events, 1, "the round reads the committed event, past the held one's id");
    await lock`select pg_advisory_unlock(7340001)`;
    await lateEmit;
    await late`commit`;
    assert.equal((await dispatchRoundStats(conn, "late_sub")).events, 1, "the next round reads the late event");
    const topics = await db.sql<{ topic: string }[]>`
      select e.topic from outbox.deliveries d join outbox.events e on e.id = d.event_id
      where d.subscription = 'late_sub' order by d.event_position`;
    assert.deepEqual(topics.map((t) => t.topic), ["late.first", "late.second"], "each event once");
  } finally {
    await late`rollback`.catch(() => undefined);
    await lock`select pg_advisory_unlock_all()`.catch(() => undefined);
    await db.sql`alter table outbox._events alter column xid set default pg_current_xact_id()`;
    for (const c of [lock, late, conn]) c.release();
  }
});
