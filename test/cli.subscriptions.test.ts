/**
 * `outbox subscribe`, `unsubscribe` and `subscriptions`, run as real processes against a
 * real database: the rows they write, exit codes, `--json` output, errors for bad input, and
 * secrets that never reach the output.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { useTestDatabase } from "./harness.js";
import { runOutbox, runOutboxAsync, type CommandResult } from "./outboxCommand.js";

const db = useTestDatabase();
const SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TOKEN = "Bearer tok-3f9a1c";

function outbox(...args: string[]) {
  return runOutbox(args, { DATABASE_URL: db.url });
}

interface ListedSubscription {
  name: string;
  kind: string;
  pattern: string;
  config: Record<string, unknown>;
  filter: string | null;
  tenant: string | null;
  active: boolean;
  maxAttempts: number;
  ordered: boolean;
}

test("subscribe --webhook writes the same row as SQL; the output never shows the secret or header values", async () => {
  const saved = outbox(
    "subscribe", "crm", "--pattern", "public.users.*", "--webhook", "https://crm.internal/hooks?key=k-77",
    "--secret", SECRET, "--header", `Authorization=${TOKEN}`, "--batch-size", "10", "--timeout-ms", "5000",
    "--concurrency", "4", "--json",
  );
  assert.equal(saved.code, 0, saved.stderr);
  const [row] = await db.sql<{ kind: string; pattern: string; config: Record<string, unknown>; active: boolean; max_attempts: number }[]>`
    select kind, pattern, config, active, max_attempts from outbox.subscriptions where name = 'crm'`;
  assert.deepEqual(row, {
    kind: "webhook",
    pattern: "public.users.*",
    config: {
      url: "https://crm.internal/hooks?key=k-77",
      secret: SECRET,
      headers: { Authorization: TOKEN },
      batch_size: 10,
      timeout_ms: 5000,
      concurrency: 4,
    },
    active: true,
    max_attempts: 25,
  });

  const printed = JSON.parse(saved.stdout) as ListedSubscription;
  assert.equal(printed.config.secret, "whsec_…");
  assert.deepEqual(printed.config.headers, { Authorization: "[redacted]" });
  assert.equal(printed.config.url, "https://crm.internal/hooks?key=[redacted]");

  const listed = outbox("subscriptions", "--json");
  const text = outbox("subscriptions");
  assert.equal(listed.code, 0, listed.stderr);
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /crm\s+webhook\s+public\.users\.\*\s+→ https:\/\/crm\.internal\/hooks\?key=\[redacted\] \(signed\)/);
  for (const output of [saved, listed, text]) {
    const all = output.stdout + output.stderr;
    assert.doesNotMatch(all, /MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw/);
    assert.doesNotMatch(all, /tok-3f9a1c/);
    assert.doesNotMatch(all, /k-77/);
  }
});

test("subscribe --notify with every row option, then again as an update (upsert)", async () => {
  const first = outbox(
    "subscribe", "paid", "--pattern", "public.orders.update", "--notify", "orders_paid", "--filter", '$.new.status == "paid"',
    "--tenant", "org-1", "--ordered", "--max-attempts", "3", "--inactive",
  );
  assert.equal(first.code, 0, first.stderr);
  assert.match(first.stdout, /saved subscription paid/);
  const listed = JSON.parse(outbox("subscriptions", "--json").stdout) as ListedSubscription[];
  assert.deepEqual(
    listed.find((s) => s.name === "paid"),
    {
      ...listed.find((s) => s.name === "paid"),
      kind: "notify",
      pattern: "public.orders.update",
      config: { channel: "orders_paid" },
      filter: '($."new"."status" == "paid")',
      tenant: "org-1",
      active: false,
      maxAttempts: 3,
      ordered: true,
    },
  );

  const second = outbox("subscribe", "paid", "--pattern", "public.orders.*", "--notify", "orders");
  assert.equal(second.code, 0, second.stderr);
  const rows = await db.sql<{ pattern: string; config: unknown; active: boolean; ordered: boolean; tenant: string | null }[]>`
    select pattern, config, active, ordered, tenant from outbox.subscriptions where name = 'paid'`;
  assert.deepEqual([...rows], [{ pattern: "public.orders.*", config: { channel: "orders" }, active: true, ordered: false, tenant: null }]);
});

test("subscriptions --kind filters, and an empty list says so", () => {
  const notify = JSON.parse(outbox("subscriptions", "--kind", "notify", "--json").stdout) as ListedSubscription[];
  assert.ok(notify.length > 0);
  assert.ok(notify.every((s) => s.kind === "notify"));
  const handlers = outbox("subscriptions", "--kind", "handler");
  assert.equal(handlers.code, 0, handlers.stderr);
  assert.equal(handlers.stdout.trim(), "no subscriptions");
  assert.equal(outbox("subscriptions", "--kind", "kafka").code, 2);
});

test("bad input exits 2 with a message naming the option, and writes nothing", async () => {
  const cases: Array<{ args: string[]; message: RegExp }> = [
    { args: ["--pattern", "public..users", "--notify", "c"], message: /--pattern "public\.\.users" is invalid: patterns are dot-separated segments/ },
    { args: ["--pattern", "a.b", "--webhook", "ftp://example.com/x"], message: /--webhook must be an http:\/\/ or https:\/\/ URL/ },
    { args: ["--pattern", "a.b", "--webhook", "https://u:p@example.com/"], message: /--webhook must not carry user:password@/ },
    { args: ["--pattern", "a.b", "--webhook", "https://example.com", "--secret", "whsec_short-and-wrong"], message: /--secret must be a string whsec_<base64>/ },
    { args: ["--pattern", "a.b", "--webhook", "https://example.com", "--header", "Host=evil"], message: /--header: header Host is set by pg-outbox and cannot be overridden/ },
    { args: ["--pattern", "a.b", "--webhook", "https://example.com", "--header", "no-equals-sign"], message: /expected name=value/ },
    { args: ["--pattern", "a.b", "--webhook", "https://example.com", "--batch-size", "0"], message: /--batch-size <n>' argument '0' is invalid\. must be a whole number from 1 to 1000/ },
    { args: ["--pattern", "a.b", "--notify", "c", "--max-attempts", "many"], message: /must be a whole number from 1 to 1000/ },
    { args: ["--pattern", "a.b", "--notify", "c", "--secret", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"], message: /--secret applies to --webhook subscriptions only/ },
    { args: ["--pattern", "a.b", "--notify", "c", "--webhook", "https://example.com"], message: /give exactly one of --webhook <url> or --notify <channel>/ },
    { args: ["--pattern", "a.b"], message: /give exactly one of --webhook <url> or --notify <channel>/ },
    { args: ["--notify", "c"], message: /required option '--pattern <pattern>' not specified/ },
    { args: ["--pattern", "a.b", "--notify", "c", "--filter", "$ ? (@.a == 1)"], message: /filter .* is not a predicate.*Write a condition over the envelope/ },
  ];
  // Four processes at a time: each is mostly Node and tsx starting up.
  const results: CommandResult[] = [];
  for (let i = 0; i < cases.length; i += 4) {
    results.push(...(await Promise.all(cases.slice(i, i + 4).map((c) => runOutboxAsync(["subscribe", "bad", ...c.args], { DATABASE_URL: db.url })))));
  }
  for (const [i, { args, message }] of cases.entries()) {
    const result = results[i]!;
    assert.equal(result.code, 2, `${args.join(" ")}: ${result.stderr}`);
    assert.match(result.stderr, message, args.join(" "));
    assert.doesNotMatch(result.stderr, /MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw/);
  }
  const bad = await db.sql`select 1 from outbox.subscriptions where name = 'bad'`;
  assert.equal(bad.length, 0);
});

test("a bad subscription name exits 2 and says what names may contain", () => {
  const result = outbox("subscribe", "no spaces allowed", "--pattern", "a", "--notify", "c");
  assert.equal(result.code, 2);
  assert.match(result.stderr, /subscription name "no spaces allowed" is invalid: use 1 to 128 letters, digits, _ \. : - starting with a letter or digit/);
});

test("unsubscribe deletes the row and its deliveries; an unknown name exits 1 and says how to list them", async () => {
  assert.equal(outbox("subscribe", "gone-soon", "--pattern", "*", "--notify", "c").code, 0);
  const deleted = outbox("unsubscribe", "gone-soon", "--json");
  assert.equal(deleted.code, 0, deleted.stderr);
  assert.deepEqual(JSON.parse(deleted.stdout), { name: "gone-soon", deleted: true });
  assert.equal((await db.sql`select 1 from outbox.subscriptions where name = 'gone-soon'`).length, 0);

  const unknown = outbox("unsubscribe", "gone-soon");
  assert.equal(unknown.code, 1);
  assert.match(unknown.stderr, /no subscription named "gone-soon": `outbox subscriptions` lists them/);
});

test("every new command has --help and exits 0 with it", () => {
  for (const command of ["subscribe", "unsubscribe", "subscriptions", "deliveries", "redeliver", "replay", "tail"]) {
    const result = outbox(command, "--help");
    assert.equal(result.code, 0, `${command}: ${result.stderr}`);
    assert.match(result.stdout, new RegExp(`Usage: outbox ${command}`));
  }
});
