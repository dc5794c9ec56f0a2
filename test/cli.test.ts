import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { test } from "node:test";
import { useTestDatabase } from "./harness.js";

const db = useTestDatabase();

/** Runs the real `outbox` command (through tsx, from source) and returns its outcome. */
function outbox(args: string[], env: Record<string, string | undefined>) {
  const result = spawnSync(process.execPath, ["--import", "tsx", "src/cli/main.ts", ...args], {
    encoding: "utf8",
    env: { ...process.env, OUTBOX_LOG_LEVEL: "error", ...env },
    timeout: 60_000,
  });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

test("outbox migrate exits 0 and is idempotent", () => {
  const first = outbox(["migrate"], { DATABASE_URL: db.url });
  assert.equal(first.code, 0, first.stderr);
  assert.match(first.stdout, /schema is up to date/);
  assert.equal(outbox(["migrate"], { DATABASE_URL: db.url }).code, 0);
});

test("outbox capture enable, then list --json shows the table and its health", async () => {
  await db.sql`create table cli_users (id int primary key, email text, secret text)`;
  const enabled = outbox(["capture", "enable", "cli_users", "--exclude", "secret"], { DATABASE_URL: db.url });
  assert.equal(enabled.code, 0, enabled.stderr);
  const listed = outbox(["capture", "list", "--json"], { DATABASE_URL: db.url });
  assert.equal(listed.code, 0, listed.stderr);
  const rows = JSON.parse(listed.stdout) as Array<{ tableName: string; excludeColumns: string[]; health: string }>;
  const row = rows.find((r) => r.tableName === "cli_users");
  assert.deepEqual(row?.excludeColumns, ["secret"]);
  assert.equal(row?.health, "ok");
});

test("bad input exits 2 with PostgreSQL's reason", () => {
  const result = outbox(["capture", "enable", "cli_users", "--columns", "nope"], { DATABASE_URL: db.url });
  assert.equal(result.code, 2);
  assert.match(result.stderr, /has no column nope/);
});

test("a bad DATABASE_URL exits 3 with one line and without echoing it", () => {
  const result = outbox(["migrate"], { DATABASE_URL: "mysql://root:hunter2@localhost/db" });
  assert.equal(result.code, 3);
  assert.equal(result.stderr.trim().split("\n").length, 1);
  assert.match(result.stderr, /DATABASE_URL is not a PostgreSQL connection string/);
  assert.doesNotMatch(result.stderr, /hunter2/);
});

test("an unreachable database exits 4 and the password stays secret", () => {
  const result = outbox(["capture", "list"], { DATABASE_URL: "postgres://app:hunter2@127.0.0.1:1/app" });
  assert.equal(result.code, 4);
  assert.match(result.stderr, /cannot reach PostgreSQL/);
  assert.doesNotMatch(result.stderr + result.stdout, /hunter2/);
});

test("a missing DATABASE_URL and an unknown command are usage errors", () => {
  const missing = outbox(["migrate"], { DATABASE_URL: undefined });
  assert.equal(missing.code, 3);
  assert.match(missing.stderr, /DATABASE_URL is not set/);
  assert.equal(outbox(["no-such-command"], { DATABASE_URL: db.url }).code, 2);
});
