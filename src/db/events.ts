/** Runtime SQL on events (`outbox.emit`, `outbox.events`). */
import { sql as drizzleSql, type SQL } from "drizzle-orm";
import type { Sql, TransactionSql } from "postgres";
import { OutboxError, wrapDatabaseError } from "../errors.js";

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
 * A drizzle database or transaction, on any driver (postgres.js, node-postgres): what emit
 * needs of it is `execute` of a drizzle `sql` query.
 */
export interface DrizzleExecutor {
  execute(query: SQL): Promise<unknown>;
}

/** A node-postgres client, pool client or pool (`pg`). */
export interface PgQueryable {
  query(text: string, values: unknown[]): Promise<{ rows: unknown[] }>;
}

/**
 * Where `emit` can write an event: a postgres.js client or transaction, a drizzle database or
 * transaction (postgres.js or node-postgres), or a node-postgres client. The event commits or
 * rolls back with that transaction.
 */
export type EmitClient = Queryable | DrizzleExecutor | PgQueryable;

/**
 * Writes an application event in the given client's transaction (`outbox.emit`); returns its id.
 * `data` is stored as jsonb. `key` orders events in `ordered` subscriptions.
 */
export async function eventEmit(client: EmitClient, topic: string, data: unknown, key?: string | null): Promise<string> {
  const json = JSON.stringify(data ?? null);
  try {
    let rows: readonly unknown[];
    if (typeof client === "function") {
      rows = await client`select outbox.emit(${topic}, ${json}::text::jsonb, ${key ?? null}) as id`;
    } else if ("execute" in client && typeof client.execute === "function") {
      const result = await client.execute(drizzleSql`select outbox.emit(${topic}, ${json}::text::jsonb, ${key ?? null}) as id`);
      // postgres.js drizzle returns the rows, node-postgres drizzle a result with `rows`.
      rows = Array.isArray(result) ? result : (result as { rows: unknown[] }).rows;
    } else if ("query" in client && typeof client.query === "function") {
      rows = (await client.query("select outbox.emit($1, $2::text::jsonb, $3) as id", [topic, json, key ?? null])).rows;
    } else {
      throw new OutboxError(
        "invalid_input",
        `emit ${topic}: the client is neither a postgres.js client, a drizzle database or transaction, nor a node-postgres client`,
      );
    }
    return String((rows[0] as { id: unknown }).id);
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

/** An event as `outbox tail` and `captureEvents` read it: the envelope as PostgreSQL rendered it. */
export interface CommittedEvent {
  /** Internal monotonic position (bigint as a string). */
  position: string;
  topic: string;
  /** The envelope as JSON text (numbers keep every digit). */
  payload: string;
}

/**
 * Where a reader of committed events stands: the last stored event row it read, and which
 * transactions were still in flight when it read (DESIGN.md guarantee 3). Reading by
 * position alone would lose the events of a transaction that commits after a later one.
 */
export interface EventCursor {
  /** Last `_events.id` read (bigint as a string); "0" reads from the beginning. */
  lastId: string;
  /** `pg_snapshot_xmax` of the previous read; null before the first. */
  xmax: string | null;
  /** `pg_snapshot_xip` of the previous read. */
  xip: string[];
}

/**
 * Reads the events committed since `cursor`, in one REPEATABLE READ snapshot: stored rows
 * after `lastId` (at most `limit` of them, each a statement's events), and rows at or before
 * it whose transaction was still in flight at the previous read. Only topics matching
 * `pattern` (default every event). Returns them in position order, the next cursor, and
 * whether more stored rows are waiting beyond `limit` (default 100).
 */
export async function eventReadCommitted(
  sql: Sql,
  cursor: EventCursor,
  options: { pattern?: string | null; limit?: number } = {},
): Promise<{ events: CommittedEvent[]; cursor: EventCursor; more: boolean }> {
  const pattern = options.pattern ?? null;
  const limit = options.limit ?? 100;
  try {
    return await sql.begin("isolation level repeatable read read only", async (tx) => {
      const [snapshot] = await tx<{ xmax: string; xip: string[] | null }[]>`
        select pg_snapshot_xmax(s)::text as xmax, array(select x::text from pg_snapshot_xip(s) x) as xip
        from pg_current_snapshot() s`;
      const rows = await tx<{ id: string }[]>`
        (select e.id::text as id from outbox._events e
         where e.id > ${cursor.lastId}::bigint order by e.id limit ${limit})
        union
        (select e.id::text from outbox._events e
         where ${cursor.xmax}::xid8 is not null and e.id <= ${cursor.lastId}::bigint
           and (e.xid >= ${cursor.xmax}::xid8 or e.xid = any(${cursor.xip}::xid8[]))
           -- A visible row cannot have an xid at or above this snapshot's xmax, unless it was
           -- restored from a dump of another cluster (DESIGN.md guarantee 8) before dispatch
           -- rewrote its xid: it committed long ago and must not be read on every poll.
           and e.xid < pg_snapshot_xmax(pg_current_snapshot()))`;
      const ids = rows.map((r) => r.id);
      const newCount = rows.filter((r) => BigInt(r.id) > BigInt(cursor.lastId)).length;
      const newest = ids.reduce((max, id) => (BigInt(id) > BigInt(max) ? id : max), cursor.lastId);
      const events =
        ids.length === 0
          ? []
          : await tx<CommittedEvent[]>`
              select p.position::text as position, outbox._event_topic(e) as topic,
                     outbox._envelope_text(e, i.image, p.position) as payload
              from outbox._events e
              cross join lateral json_array_elements(e.rows) with ordinality i(image, ord)
              cross join lateral (select (e.id << 16) + i.ord - 1 as position) p
              where e.id = any(${ids}::bigint[])
                and (${pattern}::text is null or outbox.topic_matches(outbox._event_topic(e), ${pattern}))
              order by p.position`;
      return { events, cursor: { lastId: newest, xmax: snapshot!.xmax, xip: snapshot!.xip ?? [] }, more: newCount >= limit };
    });
  } catch (error) {
    throw wrapDatabaseError(error, "read events");
  }
}

/** A cursor that reads only what commits from now on (for `outbox tail --from-now`). */
export async function eventCursorNow(sql: Sql): Promise<EventCursor> {
  try {
    return await sql.begin("isolation level repeatable read read only", async (tx) => {
      const [row] = await tx<{ lastId: string; xmax: string; xip: string[] }[]>`
        select coalesce((select max(id) from outbox._events), 0)::text as "lastId",
               pg_snapshot_xmax(s)::text as xmax, array(select x::text from pg_snapshot_xip(s) x) as xip
        from pg_current_snapshot() s`;
      return { lastId: row!.lastId, xmax: row!.xmax, xip: row!.xip };
    });
  } catch (error) {
    throw wrapDatabaseError(error, "read events");
  }
}

/** The current snapshot (`pg_current_snapshot()` as text), to compare visibility later. */
export async function snapshotCurrent(client: Queryable): Promise<string> {
  const [row] = await client<{ snapshot: string }[]>`select pg_current_snapshot()::text as snapshot`;
  return row!.snapshot;
}

/**
 * The events of every transaction that committed after `snapshot` was taken (it was not
 * visible then) and before this query, in position order, as envelopes.
 */
export async function eventListCommittedSince(client: Queryable, snapshot: string): Promise<CommittedEvent[]> {
  try {
    return await client<CommittedEvent[]>`
      select p.position::text as position, outbox._event_topic(e) as topic,
             outbox._envelope_text(e, i.image, p.position) as payload
      from outbox._events e
      cross join lateral json_array_elements(e.rows) with ordinality i(image, ord)
      cross join lateral (select (e.id << 16) + i.ord - 1 as position) p
      where e.xid >= pg_snapshot_xmin(${snapshot}::pg_snapshot)
        and not pg_visible_in_snapshot(e.xid, ${snapshot}::pg_snapshot)
        -- Rows restored from another cluster can carry xids "in the future" (see eventReadCommitted).
        and e.xid < pg_snapshot_xmax(pg_current_snapshot())
      order by p.position`;
  } catch (error) {
    throw wrapDatabaseError(error, "read events");
  }
}
