import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";

/**
 * The `sql/` directory as the body of one migration: every file in name order, with a
 * marker the migration script uses to tell whether `sql/` changed since the last one.
 * Statements are separated by drizzle's breakpoint marker, one file one statement group.
 */
export function renderSqlDirectory(dir: string): string {
  const files = readdirSync(dir)
    .filter((f) => f.endsWith(".sql"))
    .sort();
  const parts = files.map((f) => `-- sql/${f}\n${readFileSync(join(dir, f), "utf8").trim()}\n`);
  return `-- pg-outbox: sql/ (${files.join(", ")})\n${parts.join("--> statement-breakpoint\n")}`;
}
