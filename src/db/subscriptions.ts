/** Runtime SQL on `outbox.subscriptions`. */
import type { Sql } from "postgres";
import { wrapDatabaseError } from "../errors.js";
import type { Subscription } from "../transports/transport.js";

/** Every subscription, for the worker's cache. */
export async function subscriptionList(sql: Sql): Promise<Subscription[]> {
  return sql<Subscription[]>`
    select name, pattern, kind, config, filter::text as filter, tenant, active,
           max_attempts as "maxAttempts", ordered
    from outbox.subscriptions order by name`;
}

/** Fields of a subscription row written from TypeScript (`subscribe`, `handle`). */
export interface SubscriptionInput {
  name: string;
  pattern: string;
  kind: string;
  config?: Record<string, unknown>;
  /** jsonpath predicate over the envelope; default none. */
  filter?: string | null;
  /** Only this tenant's events; default all. */
  tenant?: string | null;
  /** Default 25. */
  maxAttempts?: number;
  /** Default false. */
  ordered?: boolean;
  /** Default true. */
  active?: boolean;
}

/** Creates or updates a subscription by name (the same row SQL users write). */
export async function subscriptionUpsert(sql: Sql, input: SubscriptionInput): Promise<void> {
  try {
    await sql`
      insert into outbox.subscriptions (name, pattern, kind, config, filter, tenant, max_attempts, ordered, active)
      values (${input.name}, ${input.pattern}, ${input.kind}, ${JSON.stringify(input.config ?? {})}::text::jsonb,
              ${input.filter ?? null}::jsonpath, ${input.tenant ?? null}, ${input.maxAttempts ?? 25},
              ${input.ordered ?? false}, ${input.active ?? true})
      on conflict (name) do update set
        pattern = excluded.pattern, kind = excluded.kind, config = excluded.config, filter = excluded.filter,
        tenant = excluded.tenant, max_attempts = excluded.max_attempts, ordered = excluded.ordered,
        active = excluded.active`;
  } catch (error) {
    throw wrapDatabaseError(error, `subscription ${input.name}`);
  }
}

/** Deletes a subscription and its deliveries. Returns whether it existed. */
export async function subscriptionDelete(sql: Sql, name: string): Promise<boolean> {
  try {
    const rows = await sql`delete from outbox.subscriptions where name = ${name} returning 1`;
    return rows.length > 0;
  } catch (error) {
    throw wrapDatabaseError(error, `delete subscription ${name}`);
  }
}

/** Switches a subscription off with a reason (`disabled_reason`), e.g. a webhook that answered 410. */
export async function subscriptionDeactivate(sql: Sql, name: string, reason: string): Promise<void> {
  await sql`update outbox.subscriptions set active = false, disabled_reason = ${reason} where name = ${name} and active`;
}

/** A row of `outbox.subscriptions` as `outbox subscriptions` shows it (config as stored). */
export interface SubscriptionRow extends Subscription {
  disabledReason: string | null;
  createdAt: Date;
  updatedAt: Date;
}

/** Every subscription with its state, by name. The config is as stored: redact before printing. */
export async function subscriptionListRows(sql: Sql): Promise<SubscriptionRow[]> {
  try {
    return await sql<SubscriptionRow[]>`
      select name, pattern, kind, config, filter::text as filter, tenant, active,
             max_attempts as "maxAttempts", ordered, disabled_reason as "disabledReason",
             created_at as "createdAt", updated_at as "updatedAt"
      from outbox.subscriptions order by name`;
  } catch (error) {
    throw wrapDatabaseError(error, "list subscriptions");
  }
}
