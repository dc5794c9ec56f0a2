/** `outbox subscribe`, `outbox unsubscribe`, `outbox subscriptions`. */
import { Option, type Command } from "commander";
import type { SubscriptionInput, SubscriptionRow } from "../db/subscriptions.js";
import { OutboxError } from "../errors.js";
import { subscriptionSql } from "../migrationSql.js";
import { PATTERN_HINT, PATTERN_SYNTAX } from "../topicMatches.js";
import { notifyConfigSchema } from "../transports/notify.js";
import { webhookConfigSchema } from "../transports/webhookConfig.js";
import { keyValue, wholeNumber } from "./argumentParsers.js";
import { print, usageError, withOutbox } from "./context.js";

interface SubscribeOptions {
  pattern: string;
  webhook?: string;
  notify?: string;
  secret?: string;
  header?: Record<string, string>;
  batchSize?: number;
  timeoutMs?: number;
  concurrency?: number;
  filter?: string;
  tenant?: string;
  ordered?: boolean;
  maxAttempts?: number;
  inactive?: boolean;
  json?: boolean;
  sql?: boolean;
}

/** The command-line option behind each config key, so that errors name what the user typed. */
const optionOfKey: Record<string, string> = {
  url: "--webhook",
  secret: "--secret",
  headers: "--header",
  timeout_ms: "--timeout-ms",
  batch_size: "--batch-size",
  concurrency: "--concurrency",
  channel: "--notify",
};

/** Builds and validates the row `outbox subscribe` writes; throws a usage error naming the option. */
export function subscriptionFromOptions(name: string, opts: SubscribeOptions): SubscriptionInput {
  // The rule of the table's check constraint subscriptions_name_check, with a message that says it.
  if (!/^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/.test(name)) {
    throw usageError(`subscription name ${JSON.stringify(name)} is invalid: use 1 to 128 letters, digits, _ . : - starting with a letter or digit`);
  }
  if (!PATTERN_SYNTAX.test(opts.pattern)) throw usageError(`--pattern ${JSON.stringify(opts.pattern)} is invalid: ${PATTERN_HINT}`);
  if (Boolean(opts.webhook) === Boolean(opts.notify)) {
    throw usageError("give exactly one of --webhook <url> or --notify <channel>");
  }
  let kind: string;
  let candidate: Record<string, unknown>;
  if (opts.webhook) {
    kind = "webhook";
    candidate = {
      url: opts.webhook,
      ...(opts.secret !== undefined ? { secret: opts.secret } : {}),
      ...(opts.header ? { headers: opts.header } : {}),
      ...(opts.timeoutMs !== undefined ? { timeout_ms: opts.timeoutMs } : {}),
      ...(opts.batchSize !== undefined ? { batch_size: opts.batchSize } : {}),
      ...(opts.concurrency !== undefined ? { concurrency: opts.concurrency } : {}),
    };
  } else {
    const webhookOnly = (["secret", "header", "timeoutMs", "batchSize"] as const).find((k) => opts[k] !== undefined);
    if (webhookOnly) {
      const flag = `--${webhookOnly.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
      throw usageError(`${flag} applies to --webhook subscriptions only`);
    }
    kind = "notify";
    candidate = { channel: opts.notify, ...(opts.concurrency !== undefined ? { concurrency: opts.concurrency } : {}) };
  }
  const schema = kind === "webhook" ? webhookConfigSchema : notifyConfigSchema;
  const parsed = schema.safeParse(candidate);
  if (!parsed.success) {
    // Name the option, never echo the value: it may be a secret.
    const problems = parsed.error.issues.map((issue) => {
      const [key, ...rest] = issue.path.map(String);
      const option = optionOfKey[key ?? ""] ?? `config.${key}`;
      // Header problems name the header themselves.
      return key === "headers" && rest.length ? `${option}: ${issue.message}` : `${option}${rest.length ? ` ${rest.join(".")}` : ""} ${issue.message}`;
    });
    throw usageError(problems.join("; "));
  }
  return {
    name,
    pattern: opts.pattern,
    kind,
    config: parsed.data as Record<string, unknown>,
    filter: opts.filter ?? null,
    tenant: opts.tenant ?? null,
    ordered: opts.ordered ?? false,
    maxAttempts: opts.maxAttempts ?? 25,
    active: !opts.inactive,
  };
}

/** Where a subscription delivers, for the text listing (config already redacted). */
function target(row: SubscriptionRow): string {
  if (row.kind === "webhook") return `${String(row.config.url)}${row.config.secret ? " (signed)" : ""}`;
  if (row.kind === "notify") return `channel ${String(row.config.channel)}`;
  return "in-process handler";
}

function extras(row: SubscriptionRow): string {
  return [
    row.ordered ? "ordered" : "",
    row.tenant ? `tenant=${row.tenant}` : "",
    row.filter ? `filter=${row.filter}` : "",
    row.maxAttempts !== 25 ? `max_attempts=${row.maxAttempts}` : "",
    row.active ? "" : `INACTIVE${row.disabledReason ? ` (${row.disabledReason})` : ""}`,
  ]
    .filter(Boolean)
    .join("  ");
}

/** One line per subscription, columns aligned: name, kind, pattern, target, options. */
function subscriptionTable(rows: SubscriptionRow[]): string {
  const width = (pick: (r: SubscriptionRow) => string) => Math.max(...rows.map((r) => pick(r).length));
  const nameW = width((r) => r.name);
  const kindW = width((r) => r.kind);
  const patternW = width((r) => r.pattern);
  return rows
    .map((r) => `${r.name.padEnd(nameW)}  ${r.kind.padEnd(kindW)}  ${r.pattern.padEnd(patternW)}  → ${target(r)}  ${extras(r)}`.trimEnd())
    .join("\n");
}

/** Adds the subscription commands to the program. */
export function registerSubscriptionCommands(program: Command): void {
  program
    .command("subscribe <name>")
    .description("create or update a subscription (the same row as an INSERT into outbox.subscriptions); an update replaces the whole row, so an option left out takes its default")
    .requiredOption("--pattern <pattern>", "topics to receive: public.users.*, *.*.delete, order.**, or * for all")
    .option("--webhook <url>", "deliver by HTTP POST to this http(s) URL")
    .option("--notify <channel>", "deliver by pg_notify on this channel")
    .option("--secret <whsec>", "webhook signing secret whsec_<base64> (several separated by spaces while rotating)")
    .option("--header <name=value>", "extra webhook request header; repeat for more", keyValue)
    .option("--batch-size <n>", "webhook: events per request (1 sends the envelope, more a JSON array); default 1", wholeNumber(1, 1000))
    .option("--timeout-ms <n>", "webhook: per-request timeout; default 10000", wholeNumber(100, 300_000))
    .option("--concurrency <n>", "deliveries in flight across all workers; default no limit", wholeNumber(1, 10_000))
    .option("--filter <jsonpath>", 'only events matching this predicate over the envelope, e.g. \'$.new.status == "paid"\'')
    .option("--tenant <tenant>", "only this tenant's events")
    .option("--ordered", "deliver the events of one key in commit order")
    .option("--max-attempts <n>", "attempts before a delivery is dead; default 25", wholeNumber(1, 1000))
    .option("--inactive", "create it switched off (events dispatched meanwhile get no deliveries; replay brings them)")
    .option("--json", "print the saved subscription as JSON (secrets redacted)")
    .option("--sql", "print the SQL instead of running it, for your own migrations (no database needed; --secret refused)")
    .addHelpText("after", "\nExample:\n  outbox subscribe crm --pattern 'public.users.*' --webhook https://crm.internal/hooks --secret \"$CRM_SECRET\"")
    .action(async (name: string, opts: SubscribeOptions) => {
      const input = subscriptionFromOptions(name, opts);
      if (opts.sql) {
        if (opts.secret !== undefined) {
          throw usageError("--sql prints SQL meant for version control: leave --secret out of it and set the secret at deploy time (outbox subscribe … --secret, or an UPDATE of config)");
        }
        console.log(subscriptionSql(input));
        return;
      }
      const row = await withOutbox(async (outbox) => {
        await outbox.subscribe(input);
        return (await outbox.subscriptions()).find((s) => s.name === name);
      });
      print(row, Boolean(opts.json), () => `outbox: saved subscription ${row ? subscriptionTable([row]) : name}`);
    });

  program
    .command("unsubscribe <name>")
    .description("delete a subscription and its deliveries (exit 1 when there is none by that name)")
    .option("--json", "print the result as JSON")
    .action(async (name: string, opts: { json?: boolean }) => {
      const existed = await withOutbox((outbox) => outbox.unsubscribe(name));
      if (!existed) {
        throw new OutboxError("not_found", `no subscription named ${JSON.stringify(name)}: \`outbox subscriptions\` lists them`);
      }
      print({ name, deleted: true }, Boolean(opts.json), () => `outbox: deleted subscription ${name} and its deliveries`);
    });

  program
    .command("subscriptions")
    .description("list subscriptions (signing secrets, header values and URL query values redacted)")
    .addOption(new Option("--kind <kind>", "only this kind").choices(["webhook", "handler", "notify"]))
    .option("--json", "print JSON")
    .action(async (opts: { kind?: string; json?: boolean }) => {
      const rows = (await withOutbox((outbox) => outbox.subscriptions())).filter((r) => !opts.kind || r.kind === opts.kind);
      print(rows, Boolean(opts.json), () => (rows.length === 0 ? "no subscriptions" : subscriptionTable(rows)));
    });
}
