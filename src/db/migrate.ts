import { readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { drizzle } from "drizzle-orm/postgres-js";
import { migrate as drizzleMigrate } from "drizzle-orm/postgres-js/migrator";
import type { Sql } from "postgres";
import { OutboxError, sqlStateOf, wrapDatabaseError } from "../errors.js";

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

/** Whether the database has every migration this version of pg-outbox ships. */
export interface MigrationStatus {
  /** True when nothing is left to apply. */
  current: boolean;
  /** Migrations applied to the database (0 when the `outbox` schema is missing). */
  applied: number;
  /** Migrations this version ships. */
  expected: number;
}

let shippedMigrations: number[] | undefined;

/** The `when` of every migration in drizzle/meta/_journal.json, read once. */
function shippedMigrationTimes(): number[] {
  shippedMigrations ??= (
    JSON.parse(readFileSync(join(migrationsFolder, "meta", "_journal.json"), "utf8")) as { entries: Array<{ when: number }> }
  ).entries.map((e) => e.when);
  return shippedMigrations;
}

/**
 * Compares the database's migration history with the migrations shipped here, by the rule
 * drizzle's migrator applies (a migration is pending when it is newer than the newest one
 * recorded). For health checks: it throws only when the database cannot be queried.
 */
export async function migrationStatusRead(sql: Sql): Promise<MigrationStatus> {
  const shipped = shippedMigrationTimes();
  const newestShipped = Math.max(...shipped);
  try {
    const [row] = await sql<{ applied: number; newest: string | null }[]>`
      select count(*)::int as applied, max(created_at)::text as newest from outbox._migrations`;
    const newest = Number(row?.newest ?? 0);
    return { current: newest >= newestShipped, applied: row?.applied ?? 0, expected: shipped.length };
  } catch (error) {
    // 42P01 / 3F000: no migration table or no schema yet, i.e. never migrated.
    if (sqlStateOf(error) === "42P01" || sqlStateOf(error) === "3F000") return { current: false, applied: 0, expected: shipped.length };
    throw wrapDatabaseError(error, "read migration status");
  }
}
