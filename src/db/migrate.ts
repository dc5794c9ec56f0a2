import { fileURLToPath } from "node:url";
import { drizzle } from "drizzle-orm/postgres-js";
import { migrate as drizzleMigrate } from "drizzle-orm/postgres-js/migrator";
import type { Sql } from "postgres";
import { OutboxError, wrapDatabaseError } from "../errors.js";

/** Where pg-outbox's migrations live: `drizzle/` at the package root (from src/ or dist/). */
export const migrationsFolder = fileURLToPath(new URL("../../drizzle", import.meta.url));

/**
 * pg-outbox keeps its own migration history in `outbox._migrations`, apart from the app's
 * drizzle history (`drizzle.__drizzle_migrations`), so the two never confuse each other.
 */
export const migrationsTable = { migrationsSchema: "outbox", migrationsTable: "_migrations" } as const;

/** Advisory lock key serializing concurrent migrate() calls across processes. */
const MIGRATE_LOCK_KEY = 7_320_110_001;

/**
 * Brings the `outbox` schema up to date. Safe to run from several processes at once (they
 * wait on a session advisory lock) and idempotent (a second run changes nothing).
 *
 * Needs two connections from `sql`'s pool: one holds the lock while the other migrates.
 */
export async function migrate(sql: Sql): Promise<void> {
  let reserved;
  try {
    reserved = await sql.reserve();
  } catch (error) {
    throw wrapDatabaseError(error, "migrate");
  }
  try {
    await reserved`select pg_advisory_lock(${MIGRATE_LOCK_KEY})`;
    await drizzleMigrate(drizzle(sql), { migrationsFolder, ...migrationsTable });
  } catch (error) {
    const wrapped = wrapDatabaseError(error, "migrate");
    throw wrapped.code === "database_unreachable"
      ? wrapped
      : new OutboxError("migration_failed", wrapped.message, { cause: error, ...(wrapped.sqlState ? { sqlState: wrapped.sqlState } : {}) });
  } finally {
    await reserved`select pg_advisory_unlock(${MIGRATE_LOCK_KEY})`.catch(() => undefined);
    reserved.release();
  }
}
