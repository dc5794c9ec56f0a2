/**
 * README.md's SQL is real: every ```sql block runs, in order, on a fresh database, and the
 * envelope README shows for its example update is the envelope that update produces.
 * (The TypeScript and shell blocks are not run here.)
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { useTestDatabase } from "./harness.js";

const db = useTestDatabase();
const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");

/** The fenced blocks of a language, in order. */
function blocks(language: string): string[] {
  return [...readme.matchAll(/^```(\w+)\n([\s\S]*?)^```$/gm)].filter((m) => m[1] === language).map((m) => m[2]!);
}

test("every SQL block of README runs, in order, on a fresh database", async () => {
  const sql = blocks("sql");
  assert.ok(sql.length >= 4, `found ${sql.length} SQL blocks`);
  // One session, as psql would run them (blocks have their own begin/commit).
  const session = await db.sql.reserve();
  try {
    for (const [i, block] of sql.entries()) {
      await session.unsafe(block).catch((error: Error) => {
        throw new Error(`README SQL block ${i + 1} failed: ${error.message}\n${block}`);
      });
    }
  } finally {
    session.release();
  }
});

test("the envelope README shows for its example update is what that update produces (id and time aside)", async () => {
  const example = /The update `([^`]+)`( \(in a transaction that sets `outbox\.actor` as above\))? becomes:\n\n```json\n([\s\S]*?)^```$/m.exec(readme);
  assert.ok(example, "README's example update and its envelope");
  const [, update, withActor, json] = example;
  const shownActor = (JSON.parse(json!) as { actor?: string }).actor;
  await db.sql.begin(async (tx) => {
    if (withActor) await tx`select set_config('outbox.actor', ${shownActor ?? ""}, true)`;
    await tx.unsafe(update!);
  });
  const [row] = await db.sql<{ payload: Record<string, unknown> }[]>`
    select payload from outbox.events where topic = 'public.users.update' order by position desc limit 1`;
  const { id, time, ...shown } = JSON.parse(json!) as Record<string, unknown>;
  const { id: actualId, time: actualTime, ...actual } = row!.payload;
  assert.deepEqual(actual, shown);
  assert.match(String(actualId), /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$/);
  assert.match(String(id), /^[0-9a-f-]{36}$/);
  assert.match(String(actualTime), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);
  assert.match(String(time), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);
});
