/**
 * The worker's clients replace themselves when a connection closes (src/db/renewingClient.ts),
 * because postgres.js 3.4.9 can leave a connection object that never writes again: when its
 * socket closes while a small write is queued, the write timer is cancelled but not
 * forgotten, and the next start-up message is never sent. Here both connections of a client
 * are cut at once, and a query is sent as the first close is seen: it goes to the other
 * connection, whose close follows in the same turn of the event loop. That is what a worker
 * does when the network or the server cuts all its connections, since its close and error
 * handlers send queries.
 */
import assert from "node:assert/strict";
import { connect, createServer, type AddressInfo, type Socket } from "node:net";
import { after, test } from "node:test";
import postgres, { type Sql } from "postgres";
import { renewingClient } from "../src/db/renewingClient.js";
import { settleWithin } from "../src/db/settleWithin.js";
import { NoAnswerError } from "../src/errors.js";
import { silentLogger } from "../src/logger.js";
import { useTestDatabase, waitFor } from "./harness.js";

const ends: Array<() => Promise<unknown>> = [];
after(async () => {
  for (const end of ends.reverse()) await end().catch(() => undefined);
});
const db = useTestDatabase();

/**
 * A TCP relay to the test database whose connections the test can cut, as a network failure
 * would (no goodbye from the server), and sockets through it for the client under test;
 * `onClose` runs before postgres.js sees a close.
 */
async function relay(url: string) {
  const { hostname, port } = new URL(url);
  const open = new Set<Socket>();
  const server = createServer((inbound) => {
    const outbound = connect(Number(port || 5432), hostname);
    inbound.pipe(outbound).pipe(inbound);
    for (const s of [inbound, outbound]) {
      open.add(s);
      s.on("error", () => undefined);
      s.on("close", () => {
        open.delete(s);
        inbound.destroy();
        outbound.destroy();
      });
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  ends.push(() => {
    for (const s of open) s.destroy();
    return new Promise((resolve) => server.close(resolve));
  });
  const relayPort = (server.address() as AddressInfo).port;
  const state = { onClose: undefined as (() => void) | undefined };
  const socket = (): Socket => {
    const s = connect(relayPort, "127.0.0.1");
    s.on("close", () => {
      const hook = state.onClose;
      state.onClose = undefined;
      hook?.();
    });
    return s;
  };
  /** Cuts every connection through the relay. */
  const cut = () => {
    for (const s of open) s.destroy();
  };
  // postgres.js takes a socket factory; its types do not list the option.
  return { state, cut, options: { socket } as object };
}

/** Warms up both connections, cuts them, sends a query as the first close is seen, and waits for it to settle. */
async function cutWhileWriting(sql: Sql, r: Awaited<ReturnType<typeof relay>>): Promise<void> {
  await Promise.all([sql`select pg_sleep(0.05)`, sql`select pg_sleep(0.05)`]);
  let sent!: Promise<unknown>;
  const armed = new Promise<void>((resolve) => {
    r.state.onClose = () => {
      sent = sql`select 'written as the sockets close'`.execute().then(() => undefined, () => undefined);
      resolve();
    };
  });
  r.cut();
  await armed;
  await sent;
}

/** Three queries at once, so that both connections are used. */
function threeQueries(sql: Sql, round: number): Promise<number[]> {
  return Promise.all([1, 2, 3].map(async (i) => (await sql<{ n: number }[]>`select ${round * 10 + i}::int as n`)[0]!.n));
}

test("precondition: a plain postgres.js client whose connection closed with a write queued never answers again", async () => {
  const r = await relay(db.url);
  const plain = postgres(db.url, { max: 2, ...r.options, onnotice: () => undefined });
  ends.push(() => plain.end({ timeout: 0 }));
  await cutWhileWriting(plain, r);
  await assert.rejects(
    settleWithin(threeQueries(plain, 1), 3000),
    NoAnswerError,
    "postgres.js no longer has the defect renewingClient works around: the workaround can go",
  );
});

test("a renewing client answers again after its connection closed with a write queued, on a new connection", async () => {
  const r = await relay(db.url);
  const client = renewingClient(db.url, { max: 2, ...r.options, onnotice: () => undefined }, { logger: silentLogger() });
  ends.push(() => client.end({ timeout: 0 }));
  for (let round = 1; round <= 3; round++) {
    await cutWhileWriting(client.sql, r);
    assert.deepEqual(await settleWithin(threeQueries(client.sql, round), 5000), [1, 2, 3].map((i) => round * 10 + i), `answered after cut ${round}`);
  }
  assert.equal(client.renewals, 3, "replaced once per cut");
});

test("a renewing client's listener listens again on a new connection after its connection is cut, and says so", async () => {
  let relistened = 0;
  const client = renewingClient(db.url, { max: 1, onnotice: () => undefined, connection: { application_name: "renew-listen" } }, {
    logger: silentLogger(),
    onRelisten: () => relistened++,
  });
  ends.push(() => client.end({ timeout: 0 }));
  const got: string[] = [];
  await client.listen("renew_channel", (payload) => got.push(payload));
  await db.sql`select pg_notify('renew_channel', 'before')`;
  await waitFor(async () => got.includes("before"), "the notification before the cut");
  await db.sql`select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'renew-listen'`;
  await waitFor(async () => relistened === 1, "the listener to listen again");
  await db.sql`select pg_notify('renew_channel', 'after')`;
  await waitFor(async () => got.includes("after"), "the notification after the cut");
});
