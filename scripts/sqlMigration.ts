/**
 * Turns the current `sql/` files into a new drizzle-kit custom migration, so that functions,
 * triggers and views stay readable in `sql/` while `drizzle/` keeps the append-only history.
 *
 *   npm run db:sql-migration -- <name>
 *
 * Does nothing when `sql/` is unchanged since the last SQL migration. With `--amend` it
 * rewrites the newest SQL migration instead (only for one that is not committed yet).
 */
import { execFileSync } from "node:child_process";
import { readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { renderSqlDirectory } from "../src/db/sqlSource.js";

const root = new URL("..", import.meta.url).pathname;
const amend = process.argv.includes("--amend");
const name = process.argv.slice(2).find((a) => !a.startsWith("--")) ?? "functions";
const body = renderSqlDirectory(join(root, "sql"));
const drizzleDir = join(root, "drizzle");

const sqlMigrations = readdirSync(drizzleDir)
  .filter((f) => f.endsWith(".sql"))
  .sort()
  .reverse()
  .filter((f) => readFileSync(join(drizzleDir, f), "utf8").startsWith("-- pg-outbox: sql/"));
if (amend && sqlMigrations[0]) {
  writeFileSync(join(drizzleDir, sqlMigrations[0]), body);
  console.log(`rewrote drizzle/${sqlMigrations[0]} from sql/`);
  process.exit(0);
}
const previous = sqlMigrations[0] && readFileSync(join(drizzleDir, sqlMigrations[0]), "utf8");
if (previous === body) {
  console.log("sql/ is unchanged since the last SQL migration: nothing to do");
  process.exit(0);
}

execFileSync("npx", ["drizzle-kit", "generate", "--custom", "--name", name, "--config", "drizzle.config.ts"], {
  cwd: root,
  stdio: "inherit",
});
const created = readdirSync(drizzleDir).filter((f) => f.endsWith(".sql")).sort().at(-1);
if (!created) throw new Error("drizzle-kit created no migration file");
writeFileSync(join(drizzleDir, created), body);
console.log(`wrote drizzle/${created} from sql/`);
