/**
 * The test command (`npm test`): runs every test file against a real PostgreSQL.
 *
 * - `DATABASE_URL` set: that server (CI uses the machine's PostgreSQL 15).
 * - unset: an embedded PostgreSQL from npm, started here and removed afterwards.
 *
 * It migrates a template database once; each test file then clones its own database from
 * it (test/harness.ts), so files run in parallel without seeing each other.
 * Extra arguments are test files to run instead of all of them.
 */
import { spawn } from "node:child_process";
import { readdirSync } from "node:fs";
import postgres from "postgres";
import { startEmbeddedPostgres, type EmbeddedServer } from "../src/db/embeddedPostgres.js";
import { migrate } from "../src/db/migrate.js";
import { databaseUrlFor } from "../test/harness.js";

// One template per run, so two test runs on one server (two checkouts, a developer and CI)
// do not drop each other's template.
const TEMPLATE = `outbox_test_template_${process.pid}`;

let embedded: EmbeddedServer | undefined;
let url = process.env.DATABASE_URL;
if (!url) {
  console.log("DATABASE_URL is not set: starting an embedded PostgreSQL for the tests");
  embedded = await startEmbeddedPostgres();
  url = embedded.url;
}

let exitCode = 1;
try {
  const admin = postgres(url, { max: 1, onnotice: () => undefined });
  await admin.unsafe(`drop database if exists ${TEMPLATE} with (force)`);
  await admin.unsafe(`create database ${TEMPLATE}`);
  await admin.end();
  const template = postgres(databaseUrlFor(url, TEMPLATE), { max: 2, onnotice: () => undefined });
  await migrate(template);
  await template.end();

  const files = process.argv.slice(2).length
    ? process.argv.slice(2)
    : readdirSync("test")
        .filter((f) => f.endsWith(".test.ts"))
        .sort()
        .map((f) => `test/${f}`);
  exitCode = await new Promise<number>((resolve) => {
    const child = spawn(
      process.execPath,
      ["--import", "tsx", "--test", "--test-concurrency=3", "--test-reporter=spec", ...files],
      { stdio: "inherit", env: { ...process.env, DATABASE_URL: url, OUTBOX_TEST_TEMPLATE: TEMPLATE } },
    );
    child.on("exit", (code, signal) => resolve(code ?? (signal ? 1 : 0)));
  });
} finally {
  if (!embedded) {
    const admin = postgres(url, { max: 1, onnotice: () => undefined });
    await admin.unsafe(`drop database if exists ${TEMPLATE} with (force)`).catch(() => undefined);
    await admin.end();
  }
  await embedded?.stop();
}
process.exit(exitCode);
