/**
 * The SQL of pg-outbox operations as text, for an app's own migrations (a drizzle-kit custom
 * migration, or any other tool's): `outbox capture enable … --sql` and
 * `outbox subscribe … --sql` print these.
 */
import type { CaptureOptions } from "./db/captures.js";
import type { SubscriptionInput } from "./db/subscriptions.js";

/**
 * A SQL string literal. With standard_conforming_strings (on by default since PostgreSQL 9.1)
 * a doubled quote is the only escape a literal needs.
 */
export function sqlLiteral(value: string): string {
  return `'${value.replaceAll("'", "''")}'`;
}

function textArray(values: readonly string[]): string {
  return `array[${values.map(sqlLiteral).join(", ")}]::text[]`;
}

/** `select outbox.enable_capture(…);` for `table` with these options (the same call `enableCapture` makes). */
export function enableCaptureSql(table: string, options: CaptureOptions = {}): string {
  const args = [sqlLiteral(table)];
  if (options.operations) args.push(`operations => ${textArray(options.operations)}`);
  if (options.columns) args.push(`columns => ${textArray(options.columns)}`);
  if (options.excludeColumns) args.push(`exclude_columns => ${textArray(options.excludeColumns)}`);
  if (options.tenantColumn) args.push(`tenant_column => ${sqlLiteral(options.tenantColumn)}`);
  return `select outbox.enable_capture(${args.join(", ")});`;
}

/** `select outbox.disable_capture(…);` for `table`. */
export function disableCaptureSql(table: string): string {
  return `select outbox.disable_capture(${sqlLiteral(table)});`;
}

/**
 * The upsert `subscribe` runs, as one statement: it creates the subscription or replaces
 * every column of an existing one. The config is written as given: keep webhook secrets out
 * of migrations that land in version control (set them at deploy time instead).
 */
export function subscriptionSql(input: SubscriptionInput): string {
  const nullable = (value: string | null | undefined) => (value === null || value === undefined ? "null" : sqlLiteral(value));
  return [
    "insert into outbox.subscriptions (name, pattern, kind, config, filter, tenant, max_attempts, ordered, active)",
    `values (${sqlLiteral(input.name)}, ${sqlLiteral(input.pattern)}, ${sqlLiteral(input.kind)}, ${sqlLiteral(JSON.stringify(input.config ?? {}))}::jsonb,`,
    `        ${nullable(input.filter)}::jsonpath, ${nullable(input.tenant)}, ${Math.trunc(Number(input.maxAttempts ?? 25))}, ${input.ordered === true}, ${input.active !== false})`,
    "on conflict (name) do update set",
    "  pattern = excluded.pattern, kind = excluded.kind, config = excluded.config, filter = excluded.filter,",
    "  tenant = excluded.tenant, max_attempts = excluded.max_attempts, ordered = excluded.ordered, active = excluded.active;",
  ].join("\n");
}
