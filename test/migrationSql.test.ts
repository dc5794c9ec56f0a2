/**
 * `--sql`: the statements `outbox capture enable|disable` and `outbox subscribe` print for an
 * app's own migrations (a drizzle-kit custom migration) do what the commands do, run twice
 * harmlessly, quote names and values safely, and never carry a webhook secret.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { enableCaptureSql, subscriptionSql } from "../src/migrationSql.js";
import { useTestDatabase } from "./harness.js";
import { runOutboxAsync } from "./outboxCommand.js";

const db = useTestDatabase();

/** `outbox <args> --sql` with no database configured at all. */
async function printed(...args: string[]): Promise<string> {
  const result = await runOutboxAsync([...args, "--sql"], { DATABASE_URL: undefined });
  assert.equal(result.code, 0, result.stderr);
  return result.stdout;
}

test("capture enable --sql prints the enable_capture call; run twice as a migration it installs capture with the options", async () => {
  await db.sql.unsafe(`create table "Odd'Table" (id int primary key, email text, password_hash text, org text)`);
  const statement = await printed("capture", "enable", `public."Odd'Table"`, "--exclude", "password_hash", "--tenant-column", "org", "--operations", "insert,update");
  assert.equal(
    statement.trim(),
    `select outbox.enable_capture('public."Odd''Table"', operations => array['insert', 'update']::text[], exclude_columns => array['password_hash']::text[], tenant_column => 'org');`,
  );
  await db.sql.unsafe(statement);
  await db.sql.unsafe(statement);
  const [capture] = await db.sql<{ operations: string[]; exclude_columns: string[]; tenant_column: string }[]>`
    select operations, exclude_columns, tenant_column from outbox.captures where table_name = 'Odd''Table'`;
  assert.deepEqual({ ...capture }, { operations: ["insert", "update"], exclude_columns: ["password_hash"], tenant_column: "org" });

  await db.sql.unsafe(await printed("capture", "disable", `public."Odd'Table"`));
  assert.equal((await db.sql`select 1 from outbox.captures where table_name = 'Odd''Table'`).length, 0);
});

test("subscribe --sql prints an upsert that writes the same row as subscribe, quotes survive, and a secret is refused", async () => {
  const statement = await printed(
    "subscribe", "obrien", "--pattern", "public.orders.*", "--webhook", "https://hooks.example.com/o'brien?x=1",
    "--header", "X-Source=it's us", "--filter", '$.new.status == "paid"', "--tenant", "org'1", "--ordered", "--max-attempts", "7",
  );
  await db.sql.unsafe(statement);
  await db.sql.unsafe(statement);
  const [row] = await db.sql<{ pattern: string; kind: string; config: unknown; filter: string; tenant: string; ordered: boolean; max_attempts: number; active: boolean }[]>`
    select pattern, kind, config, filter::text, tenant, ordered, max_attempts, active from outbox.subscriptions where name = 'obrien'`;
  assert.deepEqual(
    { ...row },
    {
      pattern: "public.orders.*",
      kind: "webhook",
      config: { url: "https://hooks.example.com/o'brien?x=1", headers: { "X-Source": "it's us" } },
      filter: '($."new"."status" == "paid")',
      tenant: "org'1",
      ordered: true,
      max_attempts: 7,
      active: true,
    },
  );

  const refused = await runOutboxAsync(
    ["subscribe", "s", "--pattern", "*", "--webhook", "https://example.com", "--secret", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "--sql"],
    { DATABASE_URL: undefined },
  );
  assert.equal(refused.code, 2);
  assert.match(refused.stderr, /--sql prints SQL meant for version control: leave --secret out/);
  assert.doesNotMatch(refused.stdout + refused.stderr, /MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw/);
});

test("the library helpers print the same statements", () => {
  assert.equal(enableCaptureSql("users"), "select outbox.enable_capture('users');");
  assert.match(subscriptionSql({ name: "n", pattern: "*", kind: "notify", config: { channel: "c" } }), /values \('n', '\*', 'notify', '\{"channel":"c"\}'::jsonb,\n\s+null::jsonpath, null, 25, false, true\)/);
});
