import type { PendingQuery, Row, Sql } from "postgres";

/** Element types {@link arrayParam} builds arrays of. */
export type ArrayParamType = "text" | "int" | "bigint" | "xid8";

/**
 * A JS array as a PostgreSQL array in a query: `${arrayParam(sql, ids, "bigint")}` is a
 * `bigint[]` with the same elements in the same order (null stays null).
 *
 * The worker's clients do not fetch array types (see `workerClientOptions`), so postgres.js
 * cannot serialize JS arrays for them; the array travels as one JSON text parameter instead.
 * `with ordinality … order by n` keeps the order explicit rather than relying on the order a
 * set-returning function happens to produce. Numbers are cast from their JSON text, so a
 * value that does not fit the type raises, as a bound parameter would.
 */
export function arrayParam(sql: Sql, values: readonly (string | number | null)[], type: ArrayParamType): PendingQuery<Row[]> {
  return sql`array(
    select v::${sql.unsafe(type)}
    from json_array_elements_text(${JSON.stringify(values)}::text::json) with ordinality u(v, n)
    order by n)`;
}
