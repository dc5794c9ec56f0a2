/**
 * Test isolation: every test file gets a database of its own, cloned from the migrated
 * template that scripts/test.ts prepared, and dropped when the file is done.
 */
import { randomBytes } from "node:crypto";
import { after, before } from "node:test";
import postgres, { type Sql } from "postgres";

/** application_name of the harness's own clients, so tests that cut connections can spare them. */
export const HARNESS_APPLICATION_NAME = "outbox-test-harness";

/** The same server as `url`, another database. */
export function databaseUrlFor(url: string, database: string): string {
  const parsed = new URL(url);
  parsed.pathname = `/${database}`;
  return parsed.toString();
}

/** A database of a test file's own. */
export interface TestDatabase {
  /** Its connection string. */
  url: string;
  /** A postgres.js client on it (superuser). */
  sql: Sql;
  /** Name of the database. */
  name: string;
}

function serverUrl(): string {
  const url = process.env.DATABASE_URL;
  if (!url) throw new Error("run the tests with `npm test`, which provides DATABASE_URL (or an embedded server)");
  return url;
}

/** Creates a fresh database cloned from the migrated template. Call `dropTestDatabase` after. */
export async function createTestDatabase(): Promise<TestDatabase> {
  const template = process.env.OUTBOX_TEST_TEMPLATE ?? "outbox_test_template";
  const name = `outbox_t_${randomBytes(5).toString("hex")}`;
  const admin = postgres(serverUrl(), { max: 1, onnotice: () => undefined });
  try {
    // Cloning takes a lock on the template; parallel test files may collide briefly.
    for (let attempt = 0; ; attempt++) {
      try {
        await admin.unsafe(`create database ${name} template ${template}`);
        break;
      } catch (error) {
        if (attempt > 20 || !String((error as Error).message).includes("being accessed")) throw error;
        await new Promise((r) => setTimeout(r, 50 * (attempt + 1)));
      }
    }
  } finally {
    await admin.end();
  }
  const url = databaseUrlFor(serverUrl(), name);
  return {
    url,
    name,
    sql: postgres(url, { max: 5, onnotice: () => undefined, connection: { application_name: HARNESS_APPLICATION_NAME } }),
  };
}

/** Drops a database made by {@link createTestDatabase}. */
export async function dropTestDatabase(db: TestDatabase): Promise<void> {
  await db.sql.end({ timeout: 5 });
  const admin = postgres(serverUrl(), { max: 1, onnotice: () => undefined });
  try {
    await admin.unsafe(`drop database if exists ${db.name} with (force)`);
  } finally {
    await admin.end();
  }
}

/**
 * Registers before/after hooks giving the calling test file its own database.
 * The returned object is filled in by the `before` hook.
 */
export function useTestDatabase(): TestDatabase {
  const holder = {} as TestDatabase;
  before(async () => {
    Object.assign(holder, await createTestDatabase());
  });
  after(async () => {
    if ("sql" in holder) await dropTestDatabase(holder);
  });
  return holder;
}

/** Polls `check` until it returns a truthy value or `timeoutMs` passes. */
export async function waitFor<T>(check: () => Promise<T | undefined | null | false>, what: string, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
