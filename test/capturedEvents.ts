/** Reading captured events back in tests: the columns of `outbox.events` they assert on. */
import type { Sql } from "postgres";

/** A row of `outbox.events` with the envelope fields capture tests look at. */
export interface CapturedEventRow {
  topic: string;
  op: string;
  schema_name: string;
  table_name: string;
  key: Record<string, unknown>;
  payload: {
    type: string;
    table: { schema: string; name: string };
    key: Record<string, unknown>;
    new: Record<string, unknown> | null;
    old: Record<string, unknown> | null;
    changed?: string[];
  };
}

/** Events of a schema (and table, when given), in position order. */
export async function capturedEvents(sql: Sql, schema: string, table?: string): Promise<CapturedEventRow[]> {
  return sql<CapturedEventRow[]>`
    select topic, op, schema_name, table_name, key, payload from outbox.events
    where schema_name = ${schema} and (${table ?? null}::text is null or table_name = ${table ?? null})
    order by position`;
}
