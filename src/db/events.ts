/** Runtime SQL on events (`outbox.emit`, `outbox.events`). */
import type { Sql, TransactionSql } from "postgres";
import { wrapDatabaseError } from "../errors.js";

/** A client to run a query on: the pool, a reserved connection or a transaction. */
export type Queryable = Sql | TransactionSql;

/** An event as `outbox.events` shows it. */
export interface EventRow {
  id: string;
  /** Internal monotonic position (bigint as a string). */
  position: string;
  topic: string;
  op: string;
  key: unknown;
  tenant: string | null;
  /** The envelope delivered to subscribers. */
  payload: Record<string, unknown>;
  createdAt: Date;
}

/**
 * Writes an application event in the given client's transaction (`outbox.emit`); returns its id.
 * `data` is stored as jsonb. `key` orders events in `ordered` subscriptions.
 */
export async function eventEmit(client: Queryable, topic: string, data: unknown, key?: string | null): Promise<string> {
  try {
    const [row] = await client<{ id: string }[]>`
      select outbox.emit(${topic}, ${JSON.stringify(data ?? null)}::text::jsonb, ${key ?? null}) as id`;
    return row!.id;
  } catch (error) {
    throw wrapDatabaseError(error, `emit ${topic}`);
  }
}

/** Committed events after `afterPosition`, oldest first, at most `limit`. */
export async function eventListAfter(client: Queryable, afterPosition: string, limit: number): Promise<EventRow[]> {
  try {
    return await client<EventRow[]>`
      select p.payload ->> 'id' as id, p.position::text as position, p.payload ->> 'type' as topic, e.op,
             p.payload -> 'key' as key, p.payload ->> 'tenant' as tenant, p.payload, e.created_at as "createdAt"
      from outbox._events e
      cross join lateral json_array_elements(e.rows) with ordinality i(image, ord)
      cross join lateral (select (e.id << 16) + i.ord - 1 as position) pos
      cross join lateral (select pos.position, outbox._envelope(e, i.image, pos.position) as payload) p
      where e.id >= (${afterPosition}::bigint >> 16) and pos.position > ${afterPosition}::bigint
      order by pos.position
      limit ${limit}`;
  } catch (error) {
    throw wrapDatabaseError(error, "read events");
  }
}
