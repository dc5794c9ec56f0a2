import assert from "node:assert/strict";
import { test } from "node:test";
import { webhookConfigProblems, webhookConfigSchema } from "../src/transports/webhookConfig.js";
import { useTestDatabase } from "./harness.js";

const db = useTestDatabase();

const url = "https://hooks.example.com/outbox";
const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/** What SQL says about a config: null when the row is accepted, else the error message. */
async function sqlVerdict(config: unknown): Promise<string | null> {
  const name = `c_${Math.random().toString(36).slice(2, 10)}`;
  try {
    await db.sql`
      insert into outbox.subscriptions (name, pattern, kind, config)
      values (${name}, 'c.*', 'webhook', ${JSON.stringify(config)}::text::jsonb)`;
    await db.sql`delete from outbox.subscriptions where name = ${name}`;
    return null;
  } catch (error) {
    assert.equal((error as { code?: string }).code, "23514", `a refused config raises check_violation: ${String(error)}`);
    return (error as Error).message;
  }
}

function zodVerdict(config: unknown): string | null {
  const problems = webhookConfigProblems(config);
  assert.equal(problems === null, webhookConfigSchema.safeParse(config).success);
  return problems;
}

const goodConfigs: Array<[what: string, config: Record<string, unknown>]> = [
  ["only a url", { url }],
  ["http with a port, path and query", { url: "http://127.0.0.1:8080/hooks?source=outbox" }],
  ["a bracketed IPv6 literal", { url: "http://[::1]:9000/x" }],
  ["a host name with a trailing path and fragment", { url: "https://svc.internal/a/b#frag" }],
  ["a secret", { url, secret }],
  ["two secrets during rotation", { url, secret: `${secret} whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24=` }],
  ["every option", { url, secret, headers: { Authorization: "Bearer abc", "X-Tenant": "t1" }, timeout_ms: 5000, batch_size: 100, concurrency: 4 }],
  ["a header with a tab in its value", { url, headers: { "X-Note": "a\tb" } }],
  ["the limits", { url, timeout_ms: 100, batch_size: 1000, concurrency: 10000 }],
  ["a user-agent of its own", { url, headers: { "User-Agent": "my-app" } }],
];

const badConfigs: Array<[what: string, config: unknown, sqlMessage: RegExp, zodPath: string]> = [
  ["no url", {}, /config\.url must be an http:\/\/ or https:\/\/ URL/, "config.url"],
  ["a url that is not a string", { url: 42 }, /config\.url must be an http/, "config.url"],
  ["an ftp url", { url: "ftp://example.com/x" }, /config\.url must be an http/, "config.url"],
  ["a url without host", { url: "http:///x" }, /config\.url must be an http/, "config.url"],
  ["a url with a space", { url: "http://exa mple.com/" }, /config\.url must be an http/, "config.url"],
  ["a url with a port above 65535", { url: "http://example.com:70000/" }, /config\.url must be an http/, "config.url"],
  ["an upper-case scheme", { url: "HTTP://example.com/" }, /config\.url must be an http/, "config.url"],
  ["a url with user:password@", { url: "https://user:pw@example.com/" }, /config\.url must not carry user:password@; send credentials in config\.headers/, "config.url"],
  ["a secret without the whsec_ prefix", { url, secret: "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" }, /config\.secret must be a string whsec_<base64>/, "config.secret"],
  ["a secret too short", { url, secret: "whsec_abc" }, /config\.secret must be a string whsec_<base64>/, "config.secret"],
  ["a secret with padding inside", { url, secret: "whsec_MfKQ9r8GKY=qrTwjUPD8ILPZIo2La" }, /config\.secret must be a string whsec_<base64>/, "config.secret"],
  ["two secrets separated by two spaces", { url, secret: `${secret}  ${secret}` }, /config\.secret must be a string whsec_<base64>/, "config.secret"],
  ["a secret that is a number", { url, secret: 12345 }, /config\.secret must be a string/, "config.secret"],
  ["headers as a list", { url, headers: ["X-A: 1"] }, /config\.headers must be an object of string values/, "config.headers"],
  ["a header value that is a number", { url, headers: { "X-A": 1 } }, /config\.headers: header X-A must be a string/, "config.headers.X-A"],
  ["a header overriding webhook-signature", { url, headers: { "Webhook-Signature": "v1,forged" } }, /header Webhook-Signature is set by pg-outbox and cannot be overridden/, "config.headers.Webhook-Signature"],
  ["a header overriding webhook-id", { url, headers: { "webhook-id": "x" } }, /header webhook-id is set by pg-outbox/, "config.headers.webhook-id"],
  ["a header overriding content-length", { url, headers: { "Content-Length": "5" } }, /header Content-Length is set by pg-outbox/, "config.headers.Content-Length"],
  ["a header overriding host", { url, headers: { Host: "evil.example" } }, /header Host is set by pg-outbox/, "config.headers.Host"],
  ["a header overriding transfer-encoding", { url, headers: { "Transfer-Encoding": "chunked" } }, /header Transfer-Encoding is set by pg-outbox/, "config.headers.Transfer-Encoding"],
  ["a header overriding content-type", { url, headers: { "content-type": "text/plain" } }, /header content-type is set by pg-outbox/, "config.headers.content-type"],
  ["a header name with a space", { url, headers: { "X A": "1" } }, /header name "X A" is not a valid HTTP header name/, "config.headers.X A"],
  ["a header value with a line break", { url, headers: { "X-A": "1\r\nX-Injected: 1" } }, /header X-A must be at most 8192 characters without line breaks/, "config.headers.X-A"],
  ["the same header twice in different case", { url, headers: { "X-A": "1", "x-a": "2" } }, /appears twice \(header names are case-insensitive\)/, "config.headers.x-a"],
  ["51 headers", { url, headers: Object.fromEntries(Array.from({ length: 51 }, (_, i) => [`X-H${i}`, "v"])) }, /config\.headers must have at most 50 headers/, "config.headers"],
  ["timeout_ms below 100", { url, timeout_ms: 99 }, /config\.timeout_ms must be a whole number from 100 to 300000/, "config.timeout_ms"],
  ["timeout_ms fractional", { url, timeout_ms: 1500.5 }, /config\.timeout_ms must be a whole number/, "config.timeout_ms"],
  ["timeout_ms as a string", { url, timeout_ms: "1000" }, /config\.timeout_ms must be a whole number/, "config.timeout_ms"],
  ["batch_size 0", { url, batch_size: 0 }, /config\.batch_size must be a whole number from 1 to 1000/, "config.batch_size"],
  ["batch_size 1001", { url, batch_size: 1001 }, /config\.batch_size must be a whole number from 1 to 1000/, "config.batch_size"],
  ["concurrency 0", { url, concurrency: 0 }, /config\.concurrency must be a whole number from 1 to 10000/, "config.concurrency"],
  ["an unknown key", { url, retries: 3 }, /config has unknown key 'retries' for kind webhook/, "config"],
  ["allow_private, which the worker option decides instead", { url, allow_private: true }, /config has unknown key 'allow_private'/, "config"],
  ["a config that is not an object", [url], /config must be a JSON object/, "config"],
];

for (const [what, config] of goodConfigs) {
  test(`webhook config with ${what} is accepted by both zod and SQL`, async () => {
    assert.equal(zodVerdict(config), null);
    assert.equal(await sqlVerdict(config), null);
  });
}

for (const [what, config, sqlMessage, zodPath] of badConfigs) {
  test(`webhook config with ${what} is refused by both zod and SQL, each naming the key`, async () => {
    const sqlMessageText = await sqlVerdict(config);
    assert.ok(sqlMessageText, "SQL refuses it");
    assert.match(sqlMessageText, sqlMessage);
    assert.match(sqlMessageText, /\(subscription 'c_\w+', kind webhook\)/, "the message names the subscription");
    const zodMessage = zodVerdict(config);
    assert.ok(zodMessage, "zod refuses it");
    assert.ok(zodMessage.startsWith(`${zodPath} `), `zod names ${zodPath}: ${zodMessage}`);
  });
}

test("the messages never echo a refused header's value or the secret", async () => {
  const config = { url, secret: "whsec_short", headers: { Authorization: "Bearer top-secret-token\n" } };
  const sqlMessageText = (await sqlVerdict(config)) ?? "";
  const zodMessage = zodVerdict(config) ?? "";
  for (const text of [sqlMessageText, zodMessage]) {
    assert.ok(!text.includes("top-secret-token"), text);
    assert.ok(!text.includes("whsec_short"), text);
  }
});

test("a webhook row that breaks by update is refused and keeps its config", async () => {
  await db.sql`insert into outbox.subscriptions (name, pattern, kind, config) values ('c_upd', 'c.*', 'webhook', ${JSON.stringify({ url })}::text::jsonb)`;
  await assert.rejects(
    db.sql`update outbox.subscriptions set config = config || '{"headers": {"Host": "x"}}' where name = 'c_upd'`,
    /header Host is set by pg-outbox and cannot be overridden/,
  );
  const [row] = await db.sql`select config from outbox.subscriptions where name = 'c_upd'`;
  assert.deepEqual(row!.config, { url });
});
