import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { CliEnv } from "../config.js";
import { startEmbeddedPostgres, type EmbeddedServer } from "../db/embeddedPostgres.js";
import { createOutbox } from "../outbox.js";
import { startDemoReceiver, type ReceivedEvent } from "./demoReceiver.js";
import { withProgress } from "./progress.js";
import { statusTable } from "./statusTable.js";

/** Names the demo owns in a database of the user's (DATABASE_URL): removed at the end and on Ctrl-C. */
const DEMO_SCHEMA = "outbox_demo";
const HANDLER = "demo-printer";
const WEBHOOK = "demo-webhook";
/** Captured changes the writes make (two inserts, an update, a delete) and, for the webhook, the emitted event too. */
const CAPTURED_CHANGES = 4;
const WEBHOOK_EVENTS = CAPTURED_CHANGES + 1;
const DELIVERY_TIMEOUT_MS = 60_000;

/** A line of output that does not collide with a progress line being redrawn in a terminal. */
function say(line: string): void {
  console.log(`${process.stdout.isTTY ? "\r\x1b[K" : ""}${line}`);
}

function step(text: string): void {
  say(`\n▸ ${text}`);
}

/** The failing row of the demo: grace's insert fails its first attempt, in the handler and at the receiver. */
function isGraceInsert(event: object): boolean {
  const { op, new: row } = event as { op?: unknown; new?: { customer?: unknown } | null };
  return op === "insert" && row?.customer === "grace";
}

/**
 * The demo behind `npm run demo`: starts the embedded PostgreSQL in a data folder of its own
 * (or uses DATABASE_URL when set), migrates, creates a demo table with capture enabled,
 * subscribes a local webhook receiver and an in-process handler, writes rows (one fails its
 * first attempt and is retried), prints what was delivered and the final `outbox status`
 * table. Ctrl-C (or SIGTERM) stops it and cleans up: the embedded server and its data, or in
 * a database of the user's the demo schema and subscriptions. Exit code 1 when not every
 * delivery arrived within 60 s.
 */
export async function runDemo(env: CliEnv): Promise<void> {
  // Cleanup steps, run once, newest first: on the normal way out and on a signal.
  const cleanups: (() => Promise<unknown>)[] = [];
  let cleaning: Promise<void> | undefined;
  const cleanUp = () =>
    (cleaning ??= (async () => {
      for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
    })());
  const onSignal = (signal: NodeJS.Signals) => {
    say(`\n${signal === "SIGINT" ? "interrupted" : signal}: cleaning up`);
    void cleanUp().then(() => process.exit(signal === "SIGINT" ? 130 : 143));
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  // The embedded server's package stops its servers on a signal and then exits by itself,
  // possibly before the cleanup above is through; whatever ends the process, the data
  // folder goes (the server is stopped by then).
  let dataDir: string | undefined;
  const removeDataDir = () => {
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  };
  process.once("exit", removeDataDir);

  try {
    let url = env.DATABASE_URL;
    const own = !url;
    if (url) {
      step("Using DATABASE_URL (the demo's schema and subscriptions are removed at the end)");
    } else {
      dataDir = mkdtempSync(join(tmpdir(), "pg-outbox-demo-"));
      say(`\n▸ No DATABASE_URL: an embedded PostgreSQL in ${dataDir} (removed at the end)`);
      const starting = startEmbeddedPostgres({ dataDir });
      cleanups.push(async () => (await starting.catch(() => undefined))?.stop());
      const server: EmbeddedServer = await withProgress("Starting the embedded PostgreSQL (initdb, first run may take a while)", () => starting);
      url = server.url;
    }

    const outbox = createOutbox({ connectionString: url });
    cleanups.push(() => outbox.close());
    await withProgress("Migrating the outbox schema", () => outbox.migrate());

    step(`Creating ${DEMO_SCHEMA}.orders and enabling capture (card_number excluded)`);
    if (!own) {
      cleanups.push(async () => {
        await outbox.sql`delete from outbox.subscriptions where name in (${HANDLER}, ${WEBHOOK})`;
        await outbox.sql.unsafe(`drop schema if exists ${DEMO_SCHEMA} cascade`);
      });
    }
    await outbox.sql.unsafe(`
      drop schema if exists ${DEMO_SCHEMA} cascade;
      create schema ${DEMO_SCHEMA};
      create table ${DEMO_SCHEMA}.orders (
        id bigint generated always as identity primary key,
        customer text not null,
        status text not null default 'new',
        total numeric(12, 2) not null,
        card_number text
      );`);
    await outbox.enableCapture(`${DEMO_SCHEMA}.orders`, { excludeColumns: ["card_number"] });
    const [mark] = await outbox.sql<{ position: string }[]>`
      select coalesce(max(position), -1)::text as position from outbox.events`;

    const secret = `whsec_${randomBytes(24).toString("base64")}`;
    const receiver = await startDemoReceiver({ port: 0, host: "127.0.0.1", secret, failFirstAttempt: isGraceInsert, print: say });
    cleanups.push(() => receiver.close());
    step(`Subscribing a webhook receiver (${receiver.url}, signed) to ${DEMO_SCHEMA}.** : it answers 503 to grace's insert once`);
    await outbox.subscribe({ name: WEBHOOK, pattern: `${DEMO_SCHEMA}.**`, kind: "webhook", config: { url: `${receiver.url}/hooks`, secret } });

    step(`Registering a handler for ${DEMO_SCHEMA}.orders.* (ordered per key): it throws on grace's insert once`);
    const handled: string[] = [];
    let handlerFailed = false;
    outbox.handle(
      HANDLER,
      `${DEMO_SCHEMA}.orders.*`,
      (event, context) => {
        if (isGraceInsert(event) && !handlerFailed) {
          handlerFailed = true;
          say(`  ✉ handler got ${event.type} key=${JSON.stringify(event.key)}: throws on purpose, pg-outbox will retry`);
          throw new Error("demo: simulated failure, will be retried");
        }
        handled.push(event.id);
        say(`  ✉ handler got ${event.type} key=${JSON.stringify(event.key)} (attempt ${context.attempt})`);
      },
      { ordered: true },
    );
    const worker = await withProgress("Starting a worker (dispatch, delivery, retention)", () => outbox.start());
    cleanups.push(() => worker.stop());

    step("Writing: two inserts, an update, a delete, a rolled-back insert and an emitted event");
    await outbox.sql.begin(async (tx) => {
      await tx`select set_config('outbox.actor', 'demo-user', true)`;
      await tx.unsafe(`insert into ${DEMO_SCHEMA}.orders (customer, total, card_number)
                       values ('ada', 42.00, '4111 1111 1111 1111'), ('grace', 7.50, '5500 0000 0000 0004')`);
      await outbox.emit(tx, `${DEMO_SCHEMA}.batch_imported`, { count: 2 }, { key: "import-1" });
    });
    await outbox.sql.unsafe(`update ${DEMO_SCHEMA}.orders set status = 'paid' where customer = 'ada'`);
    await outbox.sql.unsafe(`delete from ${DEMO_SCHEMA}.orders where customer = 'grace'`);
    await outbox.sql
      .begin(async (tx) => {
        await tx.unsafe(`insert into ${DEMO_SCHEMA}.orders (customer, total) values ('never', 1)`);
        throw new Error("rolled back on purpose");
      })
      .catch(() => undefined);

    step("Events in outbox.events (the rolled-back insert left none; card_number is never in them)");
    const events = await outbox.events({ after: mark!.position });
    for (const event of events) {
      const p = event.payload as { new?: Record<string, unknown>; changed?: string[]; data?: unknown; actor?: string };
      const detail = p.changed ? `changed=${JSON.stringify(p.changed)}` : p.new ? `new=${JSON.stringify(p.new)}` : p.data ? `data=${JSON.stringify(p.data)}` : "";
      say(`  ${event.topic.padEnd(32)} key=${JSON.stringify(event.key)}  ${detail}${p.actor ? `  actor=${p.actor}` : ""}`);
    }

    const webhookEvents = () => receiver.received.filter((e: ReceivedEvent) => e.type.startsWith(`${DEMO_SCHEMA}.`)).length;
    const delivered = () => handled.length >= CAPTURED_CHANGES && webhookEvents() >= WEBHOOK_EVENTS;
    await withProgress(
      "Delivering (the failed attempts are retried)",
      async () => {
        const deadline = Date.now() + DELIVERY_TIMEOUT_MS;
        while (!delivered() && Date.now() < deadline) {
          // A retry waits its backoff (up to 2 s for a second attempt); the demo does not.
          await outbox.sql`
            update outbox.deliveries set next_attempt_at = now()
            where subscription in (${HANDLER}, ${WEBHOOK}) and status = 'retrying' and next_attempt_at > now()`;
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
      },
      () => `handler ${handled.length}/${CAPTURED_CHANGES}, webhook ${webhookEvents()}/${WEBHOOK_EVENTS}`,
    );
    await worker.stop();

    step("outbox status");
    say(statusTable(await outbox.status()));
    const retried = await outbox.sql<{ subscription: string; attempts: number; topic: string }[]>`
      select d.subscription, d.attempts, e.topic
      from outbox.deliveries d join outbox.events e on e.id = d.event_id
      where d.subscription in (${HANDLER}, ${WEBHOOK}) and d.attempts > 1 and d.status = 'delivered'
      order by d.subscription`;
    for (const r of retried) say(`  retried: ${r.subscription} delivered ${r.topic} on attempt ${r.attempts}`);

    const ok = delivered();
    say(
      `\n${ok ? "✔" : "✖"} demo ${ok ? "finished" : "incomplete"}: ${events.length} events captured or emitted; ` +
        `${handled.length}/${CAPTURED_CHANGES} delivered to the handler, ${webhookEvents()}/${WEBHOOK_EVENTS} to the webhook receiver, ${retried.length} after a retry`,
    );
    if (!ok) process.exitCode = 1;
  } finally {
    await cleanUp();
    removeDataDir();
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    process.off("exit", removeDataDir);
  }
}
