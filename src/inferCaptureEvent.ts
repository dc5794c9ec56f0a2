/**
 * Types of capture events derived from a drizzle table, so that handlers and test assertions
 * read `event.new.email` with the type it has on the wire. Type-only: nothing here runs.
 */
import type { Column, Table } from "drizzle-orm";
import type { OutboxEvent } from "./transports/transport.js";

/** A value after `to_json`: dates become ISO strings, bigints JSON numbers, objects and arrays element by element. */
export type JsonOf<T> = T extends Date
  ? string
  : T extends bigint
    ? number
    : T extends ReadonlyArray<infer U>
      ? JsonOf<U>[]
      : T extends object
        ? { [K in keyof T]: JsonOf<T[K]> }
        : T;

/**
 * How PostgreSQL's `to_json` renders a column, by drizzle column type: numeric and 64-bit
 * integers become JSON numbers (drizzle reads numeric as a string, the event carries a
 * number: mind the precision of very large values), date and time types ISO strings, points
 * and lines their text form; json and jsonb keep their declared type.
 */
type ColumnJson<C extends Column> = C["_"]["columnType"] extends
  | "PgNumeric"
  | "PgNumericNumber"
  | "PgNumericBigInt"
  | "PgBigInt53"
  | "PgBigInt64"
  | "PgBigSerial53"
  | "PgBigSerial64"
  ? number
  : C["_"]["columnType"] extends "PgDate" | "PgDateString" | "PgTime" | "PgTimestamp" | "PgTimestampString" | "PgInterval" | "PgPointObject" | "PgPointTuple" | "PgLine" | "PgLineABC"
    ? string
    : C["_"]["columnType"] extends "PgJson" | "PgJsonb"
      ? C["_"]["data"]
      : JsonOf<C["_"]["data"]>;

/** A nullable column may be null in the row image. */
type ColumnValue<C extends Column> = C["_"]["notNull"] extends true ? ColumnJson<C> : ColumnJson<C> | null;

/**
 * The column's name in the database (what events carry): the name given to the column
 * builder, or the property name when none was given. (Tables declared with drizzle's
 * `casing` option and no explicit names are not followed: give names, or map the type.)
 */
type DbName<K, C extends Column> = C["_"]["name"] extends "" ? K : C["_"]["name"];

/** A row image of the table as capture events carry it, without `TExcluded` columns (`exclude_columns`). */
export type CaptureEventRow<T extends Table, TExcluded extends string = never> = {
  [K in keyof T["_"]["columns"] as DbName<K, T["_"]["columns"][K]> extends TExcluded ? never : DbName<K, T["_"]["columns"][K]>]: ColumnValue<
    T["_"]["columns"][K]
  >;
};

/** The topic of a table's capture events: `schema.table.op` (schema `public` when the table names none). */
export type CaptureTopic<T extends Table, TOp extends string> = `${T["_"]["schema"] extends string ? T["_"]["schema"] : "public"}.${T["_"]["name"]}.${TOp}`;

type CaptureEnvelope<T extends Table, TExcluded extends string, TOp extends "insert" | "update" | "delete"> = Omit<
  OutboxEvent<never, CaptureEventRow<T, TExcluded>>,
  "type" | "op" | "new" | "old" | "changed" | "data" | "table"
> & {
  type: CaptureTopic<T, TOp>;
  op: TOp;
  table: { schema: string; name: T["_"]["name"] };
  key: Record<string, unknown>;
} & (TOp extends "insert"
    ? { new: CaptureEventRow<T, TExcluded>; old: null }
    : TOp extends "update"
      ? { new: CaptureEventRow<T, TExcluded>; old: CaptureEventRow<T, TExcluded>; changed: Array<keyof CaptureEventRow<T, TExcluded> & string> }
      : { new: null; old: CaptureEventRow<T, TExcluded> });

/**
 * The envelope of a drizzle table's capture events, one member per operation, so that
 * checking `event.op` (or `event.type`) narrows `new`, `old` and `changed`:
 *
 * ```ts
 * outbox.handle<InferCaptureEvent<typeof users, "insert" | "update", "password_hash">>("crm", "public.users.*", (event) => {
 *   if (event.op === "update") console.log(event.changed, event.old.email, event.new.email);
 * });
 * ```
 *
 * `TOp` defaults to every row operation; `TExcluded` names the columns capture excludes.
 */
export type InferCaptureEvent<
  T extends Table,
  TOp extends "insert" | "update" | "delete" = "insert" | "update" | "delete",
  TExcluded extends string = never,
> = TOp extends "insert" | "update" | "delete" ? CaptureEnvelope<T, TExcluded, TOp> : never;
