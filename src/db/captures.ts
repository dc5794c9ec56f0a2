/** Runtime SQL on captures (`outbox.enable_capture`, `outbox.captures`). */
import type { Sql } from "postgres";
import { wrapDatabaseError } from "../errors.js";

/** Options of a capture, as `outbox.enable_capture` takes them. */
export interface CaptureOptions {
  /** Operations to capture; default `['insert', 'update', 'delete']`. Add `'truncate'` to capture TRUNCATE as one event. */
  operations?: Array<"insert" | "update" | "delete" | "truncate">;
  /** Columns whose changes make an UPDATE an event; default: all columns. `new`/`old` always carry the whole row. */
  columns?: string[];
  /** Columns that never appear in events (passwords, tokens); default none. */
  excludeColumns?: string[];
  /** Column holding the row's tenant; default none (then `set local outbox.tenant` is used). */
  tenantColumn?: string;
}

/** One row of `outbox.captures`. */
export interface CaptureRow {
  schemaName: string;
  tableName: string;
  operations: string[];
  columns: string[] | null;
  excludeColumns: string[] | null;
  tenantColumn: string | null;
  keyColumns: string[] | null;
  /** `ok`, or what is wrong (missing or disabled trigger, writes that bypassed capture). */
  health: string;
  bypassedStatements: number;
  createdAt: Date;
  updatedAt: Date;
}

/** Installs or updates capture on `table` (a possibly schema-qualified, SQL-quoted name). */
export async function captureEnable(sql: Sql, table: string, options: CaptureOptions = {}): Promise<void> {
  try {
    await sql`select outbox.enable_capture(
      ${table}::regclass,
      operations => coalesce(${options.operations ?? null}::text[], '{insert,update,delete}'),
      columns => ${options.columns ?? null}::text[],
      exclude_columns => ${options.excludeColumns ?? null}::text[],
      tenant_column => ${options.tenantColumn ?? null}::text)`;
  } catch (error) {
    throw wrapDatabaseError(error, `enable capture on ${table}`);
  }
}

/** Removes capture from `table`; events already written stay. */
export async function captureDisable(sql: Sql, table: string): Promise<void> {
  try {
    await sql`select outbox.disable_capture(${table}::regclass)`;
  } catch (error) {
    throw wrapDatabaseError(error, `disable capture on ${table}`);
  }
}

/** Every captured table with its options and health. */
export async function captureList(sql: Sql): Promise<CaptureRow[]> {
  try {
    return await sql<CaptureRow[]>`
      select schema_name as "schemaName", table_name as "tableName", operations, columns,
             exclude_columns as "excludeColumns", tenant_column as "tenantColumn",
             key_columns as "keyColumns", health, bypassed_statements::int as "bypassedStatements",
             created_at as "createdAt", updated_at as "updatedAt"
      from outbox.captures order by schema_name, table_name`;
  } catch (error) {
    throw wrapDatabaseError(error, "list captures");
  }
}
