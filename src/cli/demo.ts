import type { CliEnv } from "../config.js";
import { startEmbeddedPostgres, type EmbeddedServer } from "../db/embeddedPostgres.js";
import { createOutbox } from "../outbox.js";

function step(text: string): void {
  console.log(`\n▸ ${text}`);
}

/**
 * The demo behind `npm run demo`: starts the embedded PostgreSQL (or uses DATABASE_URL),
 * migrates, captures a table, writes to it and prints the events that the writes became.
 * Ctrl-C stops it cleanly, removing the embedded server and its data.
 */
export async function runDemo(env: CliEnv): Promise<void> {
  let server: EmbeddedServer | undefined;
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    await server?.stop();
  };
  const onSignal = () => {
    console.log("\ninterrupted: stopping");
    void stop().then(() => process.exit(130));
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);

  try {
    let url = env.DATABASE_URL;
    if (url) {
      step("Using DATABASE_URL");
    } else {
      step("Starting an embedded PostgreSQL (no DATABASE_URL set) …");
      server = await startEmbeddedPostgres();
      url = server.url;
    }
    const outbox = createOutbox({ connectionString: url });
    try {
      step("Migrating the outbox schema");
      await outbox.migrate();

      step("Creating outbox_demo.orders and enabling capture (card_number excluded)");
      await outbox.sql.unsafe(`
        drop schema if exists outbox_demo cascade;
        create schema outbox_demo;
        create table outbox_demo.orders (
          id bigint generated always as identity primary key,
          customer text not null,
          status text not null default 'new',
          total numeric(12, 2) not null,
          card_number text
        );`);
      await outbox.enableCapture("outbox_demo.orders", { excludeColumns: ["card_number"] });
      const [mark] = await outbox.sql<{ position: string }[]>`
        select coalesce(max(position), -1)::text as position from outbox.events`;

      step("Registering a handler for outbox_demo.orders.* (ordered per key; it fails the first attempt at 'grace', to show a retry) and starting a worker");
      const seen: string[] = [];
      let failedOnce = false;
      outbox.handle("demo-printer", "outbox_demo.orders.*", (event, context) => {
        const row = (event.new ?? event.old) as { customer?: string } | null;
        if (row?.customer === "grace" && event.op === "insert" && !failedOnce) {
          failedOnce = true;
          throw new Error("demo: simulated failure, will be retried");
        }
        seen.push(event.id);
        console.log(`  ✉ handler got ${event.type} key=${JSON.stringify(event.key)} (attempt ${context.attempt})`);
      }, { ordered: true });
      await outbox.sql`update outbox.subscriptions set active = true where name = 'demo-printer'`.catch(() => undefined);
      const worker = await outbox.start();

      step("Writing: two inserts, an update, a delete, a rolled-back insert and an emitted event");
      await outbox.sql.begin(async (tx) => {
        await tx`select set_config('outbox.actor', 'demo-user', true)`;
        await tx`insert into outbox_demo.orders (customer, total, card_number)
                 values ('ada', 42.00, '4111 1111 1111 1111'), ('grace', 7.50, '5500 0000 0000 0004')`;
        await outbox.emit(tx, "order.batch_imported", { count: 2 }, { key: "import-1" });
      });
      await outbox.sql`update outbox_demo.orders set status = 'paid' where customer = 'ada'`;
      await outbox.sql`delete from outbox_demo.orders where customer = 'grace'`;
      await outbox.sql
        .begin(async (tx) => {
          await tx`insert into outbox_demo.orders (customer, total) values ('never', 1)`;
          throw new Error("rolled back on purpose");
        })
        .catch(() => undefined);

      step("Events in outbox.events (the rolled-back insert left none)");
      const events = await outbox.events({ after: mark!.position });
      for (const event of events) {
        const p = event.payload as { new?: Record<string, unknown>; changed?: string[]; data?: unknown; actor?: string };
        const detail = p.changed ? `changed=${JSON.stringify(p.changed)}` : p.new ? `new=${JSON.stringify(p.new)}` : p.data ? `data=${JSON.stringify(p.data)}` : "";
        console.log(`  ${event.topic.padEnd(32)} key=${JSON.stringify(event.key)}  ${detail}${p.actor ? `  actor=${p.actor}` : ""}`);
      }

      step("Waiting for the handler to receive the four captured changes (one retried) …");
      const deadline = Date.now() + 60_000;
      while (seen.length < 4 && Date.now() < deadline) {
        // The retry of the failed attempt waits its backoff; speed it up for the demo.
        await outbox.sql`update outbox.deliveries set next_attempt_at = now() where subscription = 'demo-printer' and status = 'retrying'`;
        await new Promise((r) => setTimeout(r, 200));
      }
      await worker.stop();

      step("outbox status");
      const status = await outbox.status();
      for (const s of status.subscriptions) {
        console.log(`  ${s.subscription}: delivered in the last hour ${s.deliveredLastHour}, pending ${s.pending}, retrying ${s.retrying}, dead ${s.dead}`);
      }
      const [retried] = await outbox.sql<{ n: number }[]>`
        select count(*)::int as n from outbox.deliveries where subscription = 'demo-printer' and attempts > 1 and status = 'delivered'`;
      console.log(`  deliveries that needed a retry: ${retried?.n ?? 0}`);

      step("outbox.captures");
      for (const c of await outbox.captures()) {
        console.log(`  ${c.schemaName}.${c.tableName}  operations=${c.operations.join(",")}  excluded=${(c.excludeColumns ?? []).join(",")}  health=${c.health}`);
      }
      if (env.DATABASE_URL) {
        await outbox.sql`delete from outbox.subscriptions where name = 'demo-printer'`;
        await outbox.sql`drop schema outbox_demo cascade`;
      }
      console.log(`\n✔ demo finished: ${events.length} events captured, ${seen.length} delivered to the handler`);
      if (seen.length < 4) process.exitCode = 1;
    } finally {
      await outbox.close();
    }
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    await stop();
  }
}
