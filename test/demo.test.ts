/**
 * `outbox demo` (what `npm run demo` runs), as a real process: on DATABASE_URL it runs to
 * completion with a handler and a webhook receiver, retries its failing row, prints the
 * status table and leaves nothing behind; without DATABASE_URL it starts an embedded
 * PostgreSQL in a folder of its own, and Ctrl-C stops it and removes that folder. (CI runs
 * the demo to completion on the embedded default: .ci/run.)
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { chmod, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { useTestDatabase, waitFor } from "./harness.js";
import { runOutboxAsync } from "./outboxCommand.js";

const db = useTestDatabase();

test("outbox demo on DATABASE_URL delivers to a handler and a webhook receiver, retries the failing row, prints the status table and removes what it made", async () => {
  const { code, stdout, stderr } = await runOutboxAsync(["demo"], { DATABASE_URL: db.url });
  assert.equal(code, 0, `${stdout}\n${stderr}`);
  // Both the handler and the receiver fail grace's insert once, then get it on attempt 2.
  assert.match(stdout, /handler got outbox_demo\.orders\.insert key=\{"id":2\}: throws on purpose/);
  assert.match(stdout, /handler got outbox_demo\.orders\.insert key=\{"id":2\} \(attempt 2\)/);
  assert.match(stdout, /webhook got outbox_demo\.orders\.insert key=\{"id":2\}: answered 503 on purpose/);
  assert.match(stdout, /webhook got outbox_demo\.orders\.insert key=\{"id":2\} \(webhook-id \S+, signature ok\)/);
  for (const topic of ["orders.insert", "orders.update", "orders.delete", "batch_imported"]) {
    assert.match(stdout, new RegExp(`webhook got outbox_demo\\.${topic.replace(".", "\\.")} .*signature ok`), topic);
  }
  assert.match(stdout, /retried: demo-printer delivered outbox_demo\.orders\.insert on attempt 2/);
  assert.match(stdout, /retried: demo-webhook delivered outbox_demo\.orders\.insert on attempt 2/);
  // The final status table, as `outbox status` prints it: everything delivered, nothing dead.
  assert.match(stdout, /^subscription\s+kind\s+active\s+pending\s+retrying\s+delivering\s+dead\s+delivered\/1h\s+oldest pending$/m);
  assert.match(stdout, /^demo-printer\s+handler\s+true\s+0\s+0\s+0\s+0\s+4\s+-$/m);
  assert.match(stdout, /^demo-webhook\s+webhook\s+true\s+0\s+0\s+0\s+0\s+5\s+-$/m);
  assert.match(stdout, /✔ demo finished: 5 events captured or emitted; 4\/4 delivered to the handler, 5\/5 to the webhook receiver, 2 after a retry/);
  // The rolled-back insert made no event, and the excluded column never shows.
  assert.doesNotMatch(stdout, /"customer":"never"|4111|"card_number"/);
  // Nothing of the demo is left in the user's database.
  const [left] = await db.sql<{ schemas: number; subscriptions: number }[]>`
    select (select count(*)::int from pg_namespace where nspname = 'outbox_demo') as schemas,
           (select count(*)::int from outbox.subscriptions where name like 'demo-%') as subscriptions`;
  assert.deepEqual(left, { schemas: 0, subscriptions: 0 });
});

/** Processes whose command line mentions `text` (the embedded server's postgres processes name their data folder). */
function processesMentioning(text: string): string[] {
  const found: string[] = [];
  for (const pid of readdirSync("/proc").filter((name) => /^\d+$/.test(name))) {
    try {
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " ");
      if (cmdline.includes(text)) found.push(`${pid}: ${cmdline}`);
    } catch {
      // The process ended while we looked.
    }
  }
  return found;
}

test("outbox demo without DATABASE_URL runs the embedded PostgreSQL in a folder of its own; Ctrl-C stops it and removes the folder", async () => {
  const tmp = await mkdtemp(join(tmpdir(), "pg-outbox-demo-test-"));
  // Under root the server runs as the OS user postgres, which must reach into the folder.
  await chmod(tmp, 0o755);
  try {
    // Its own process group, so that the test can send SIGINT to the group, as a terminal's Ctrl-C does.
    const env: NodeJS.ProcessEnv = { ...process.env, TMPDIR: tmp, OUTBOX_LOG_LEVEL: "error" };
    delete env.DATABASE_URL;
    const child = spawn(process.execPath, ["--import", "tsx", "src/cli/main.ts", "demo"], { env, detached: true });
    let out = "";
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => (out += chunk));
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (out += chunk));
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    try {
      const dataDir = await waitFor(async () => /embedded PostgreSQL in (\S+)/.exec(out)?.[1], "the demo to name its data folder", 30_000);
      assert.ok(dataDir.startsWith(tmp), `${dataDir} is under the temporary directory`);
      // Interrupt once the server runs (it writes postmaster.pid), before the demo is through.
      await waitFor(async () => existsSync(join(dataDir, "data", "postmaster.pid")), "the embedded server to start", 60_000).catch((error: Error) => {
        throw new Error(`${error.message}; the demo printed:\n${out}`);
      });
      assert.doesNotMatch(out, /demo finished/);
      assert.ok(processesMentioning(dataDir).length > 0, "the server's processes run on the data folder");
      process.kill(-child.pid!, "SIGINT");
      assert.equal(await exited, 130, out);
      assert.match(out, /interrupted: cleaning up/);
      assert.equal(existsSync(dataDir), false, `${dataDir} is removed`);
      await waitFor(async () => processesMentioning(dataDir).length === 0, "no process left on the data folder", 10_000);
    } finally {
      if (child.exitCode === null && child.signalCode === null) process.kill(-child.pid!, "SIGKILL");
    }
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
});
