/**
 * README.md's code is real.
 *
 * - Every ```sql block runs, in order, on a fresh database, and the envelope README shows
 *   for its example update is the envelope that update produces.
 * - Every ```ts block is type-checked (strict, the project's compiler options, as an app
 *   importing `pg-outbox` would: the import is mapped to src/index.ts) and then run with
 *   `node --import tsx` on a database of its own that holds what a reader has at that point
 *   (the outbox schema and README's SQL blocks run). A block may use names README introduces
 *   elsewhere or leaves to the app (`outbox`, `sendWelcome`, `signUp`, …): the stand-ins
 *   below supply them. Where a block makes a claim that can be checked from outside (a
 *   handler is called, a receiver accepts signed requests and refuses forged ones), a check
 *   after it does; then the program shuts down what the block started, as an app would.
 * - ```sh blocks are not run here. The two commands (`npm install && npm run demo`, `npm
 *   install && npm test`) are what CI (.ci/run) runs; the command-line examples are covered
 *   by the CLI tests (test/cli*.test.ts; `--sql` in test/migrationSql.test.ts), which spawn
 *   the real `outbox` command; the Docker Compose commands need a Docker engine, which the
 *   test machines lack: test/dockerCompose.test.ts checks the file and runs its commands
 *   and healthchecks as plain processes.
 * - ```json (an example envelope, checked above) and ```text (the command synopsis) are not code.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, test } from "node:test";
import type { Sql } from "postgres";
import { createTestDatabase, dropTestDatabase, useTestDatabase } from "./harness.js";

const db = useTestDatabase();
const root = fileURLToPath(new URL("..", import.meta.url));
const readme = readFileSync(join(root, "README.md"), "utf8");

/** A fenced block of README: its language, text and the line its fence opens on. */
interface Block {
  language: string;
  code: string;
  line: number;
}

/** The fenced blocks of a language, in order. */
function blocks(language: string): Block[] {
  return [...readme.matchAll(/^```(\w+)\n([\s\S]*?)^```$/gm)]
    .filter((m) => m[1] === language)
    .map((m) => ({ language, code: m[2]!, line: readme.slice(0, m.index).split("\n").length }));
}

/** Runs README's SQL blocks in order in one session, as psql would (blocks have their own begin/commit). */
async function runSqlBlocks(sql: Sql): Promise<void> {
  const session = await sql.reserve();
  try {
    for (const block of blocks("sql")) {
      await session.unsafe(block.code).catch((error: Error) => {
        throw new Error(`README SQL block at line ${block.line} failed: ${error.message}\n${block.code}`);
      });
    }
  } finally {
    session.release();
  }
}

test("every SQL block of README runs, in order, on a fresh database", async () => {
  assert.ok(blocks("sql").length >= 4, `found ${blocks("sql").length} SQL blocks`);
  await runSqlBlocks(db.sql);
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

// ---------------------------------------------------------------------------------------
// TypeScript blocks

/**
 * Names README's blocks use without defining them, in the order they must be declared: what
 * README introduces in another block, or leaves to the reader's app. Each is added to a
 * block's program when the block uses the name and does not declare or import it.
 */
const standIns: { name: string; code: string }[] = [
  { name: "createOutbox", code: `import { createOutbox } from "pg-outbox";` },
  // The object README's first TypeScript block creates; aliased so that it never clashes with the block's imports.
  {
    name: "outbox",
    code: `import { createOutbox as readmeCreateOutbox } from "pg-outbox";
const outbox = readmeCreateOutbox({ connectionString: process.env.DATABASE_URL! });`,
  },
  { name: "connectionString", code: `const connectionString = process.env.DATABASE_URL!;` },
  // The app's mailer: records whom it welcomed, so that the check below can see the handler ran.
  { name: "sendWelcome", code: `const welcomed: string[] = [];\nasync function sendWelcome(email: string) { welcomed.push(email); }` },
  // The app's sign-up: the user row and a welcome event, in one transaction.
  {
    name: "signUp",
    code: `async function signUp(input: { email: string }) {
  await outbox.sql.begin(async (tx) => {
    const [user] = await tx<{ id: string }[]>\`insert into users (id, email) values (7, \${input.email}) returning id::text\`;
    await outbox.emit(tx, "user.welcomed", { plan: "free" }, { key: user!.id });
  });
}`,
  },
];

/** Checks run after a block (matched by its text), before the program shuts down. */
const checks: { when: RegExp; code: string }[] = [
  {
    // A started worker with the welcome-email handler delivers a new user's insert to it.
    when: /outbox\.handle\("welcome-email"/,
    code: `await outbox.sql\`insert into users (id, email) values (99, 'grace@example.com')\`;
for (const deadline = Date.now() + 30_000; !welcomed.includes("grace@example.com"); ) {
  if (Date.now() > deadline) throw new Error(\`the handler was not called for grace@example.com (welcomed: \${welcomed.join(", ")})\`);
  await new Promise((resolve) => setTimeout(resolve, 50));
}`,
  },
  {
    // The receiver answers 204 to a request pg-outbox signs, 401 to a forged one.
    when: /new Webhook\(/,
    code: `import { webhookSignature as readmeSign } from "pg-outbox";
if (!server.listening) await new Promise((resolve) => server.once("listening", resolve));
const readmeUrl = \`http://127.0.0.1:\${(server.address() as { port: number }).port}/\`;
const readmeBody = JSON.stringify({ id: "01a201f9-6501-7000-8000-000000020000", type: "order.placed", data: {} });
const readmeTimestamp = Math.floor(Date.now() / 1000);
for (const [signature, expected] of [
  [readmeSign(process.env.OUTBOX_WEBHOOK_SECRET!, "evt-1", readmeTimestamp, readmeBody), 204],
  [readmeSign("whsec_" + Buffer.from("not the secret, not at all").toString("base64"), "evt-1", readmeTimestamp, readmeBody), 401],
] as const) {
  const response = await fetch(readmeUrl, {
    method: "POST",
    body: readmeBody,
    headers: { "content-type": "application/json", "webhook-id": "evt-1", "webhook-timestamp": String(readmeTimestamp), "webhook-signature": signature },
  });
  if (response.status !== expected) throw new Error(\`the receiver answered \${response.status}, expected \${expected}\`);
}`,
  },
];

const declares = (code: string, name: string) =>
  new RegExp(`(?:const|let|var|function|class|type|interface)\\s+${name}\\b|import[^;]*\\b${name}\\b[^;]*from`).test(code);
/**
 * Whether code refers to a name: outside imports, comments and quoted strings, not as a
 * property (`.name`), an object key or a parameter's name (`name:`).
 */
const uses = (code: string, name: string) =>
  new RegExp(`(?<![.\\w$-])${name}\\b(?!\\s*:)`).test(
    code
      .replace(/^import [^;]*;$/gm, "")
      .replace(/\/\/.*$|"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'/gm, (m) => (m.startsWith("/") ? "" : '""')),
  );

/** A README TypeScript block made into a program of its own. */
interface BlockProgram {
  block: Block;
  file: string;
  source: string;
}

/** The program of one block: stand-ins it needs, the block, its checks, then the shutdown an app would do. */
function programOf(block: Block, file: string): BlockProgram {
  const blockChecks = checks.filter((c) => c.when.test(block.code)).map((c) => c.code);
  // Stand-ins may need others (signUp uses outbox): add until nothing more is needed.
  const needed = new Set<(typeof standIns)[number]>();
  for (let grew = true; grew; ) {
    grew = false;
    const text = [block.code, ...blockChecks, ...[...needed].map((s) => s.code)].join("\n");
    for (const standIn of standIns) {
      if (!needed.has(standIn) && uses(text, standIn.name) && !declares(block.code, standIn.name)) {
        needed.add(standIn);
        grew = true;
      }
    }
  }
  const shutdown = [
    declares(block.code, "worker") ? "await worker.stop();" : "",
    declares(block.code, "server") ? "server.closeAllConnections(); server.close();" : "",
    uses(block.code, "outbox") ? "await outbox.close();" : "",
  ].filter(Boolean);
  const source = [
    `// README.md line ${block.line}, as a program (test/readme.test.ts)`,
    ...standIns.filter((s) => needed.has(s)).map((s) => s.code),
    `// ---- README block`,
    block.code,
    `// ---- checks and shutdown`,
    ...blockChecks,
    ...shutdown,
    "export {};",
    "",
  ].join("\n");
  return { block, file, source };
}

/** Runs a command to completion; resolves with its exit code and output. */
function run(command: string, args: string[], options: { cwd: string; env?: NodeJS.ProcessEnv; timeoutMs: number }) {
  return new Promise<{ code: number | null; output: string }>((resolve) => {
    const child = spawn(command, args, { cwd: options.cwd, env: options.env ?? process.env, timeout: options.timeoutMs });
    let output = "";
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => (output += chunk));
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (output += chunk));
    child.on("exit", (code) => resolve({ code, output }));
  });
}

let dir = "";
let programs: BlockProgram[] = [];

before(async () => {
  // A directory of the programs' own, outside the source tree, that resolves the project's
  // packages (a node_modules link) and `pg-outbox` to src/index.ts (tsconfig paths, which
  // both tsc and tsx follow).
  dir = await mkdtemp(join(tmpdir(), "pg-outbox-readme-"));
  await symlink(join(root, "node_modules"), join(dir, "node_modules"), "dir");
  await writeFile(join(dir, "package.json"), JSON.stringify({ type: "module" }));
  // The drizzle schema README's InferCaptureEvent block imports: the tutorial's users table.
  await writeFile(
    join(dir, "schema.ts"),
    `import { bigint, pgTable, text } from "drizzle-orm/pg-core";
export const users = pgTable("users", {
  id: bigint("id", { mode: "number" }).primaryKey(),
  email: text("email"),
  password_hash: text("password_hash"),
  org_id: text("org_id"),
});
`,
  );
  programs = blocks("ts").map((block, i) => programOf(block, `block${String(i + 1).padStart(2, "0")}.ts`));
  for (const program of programs) await writeFile(join(dir, program.file), program.source);
  const { compilerOptions } = JSON.parse(readFileSync(join(root, "tsconfig.json"), "utf8")) as { compilerOptions: Record<string, unknown> };
  const { outDir, rootDir, declaration, sourceMap, ...options } = compilerOptions;
  await writeFile(
    join(dir, "tsconfig.json"),
    JSON.stringify({
      compilerOptions: { ...options, noEmit: true, paths: { "pg-outbox": [join(root, "src/index.ts")] } },
      files: ["schema.ts", ...programs.map((p) => p.file)],
    }),
  );
});

after(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

test("every TypeScript block of README type-checks (strict, importing pg-outbox)", async () => {
  assert.ok(programs.length >= 7, `found ${programs.length} TypeScript blocks`);
  const { code, output } = await run(process.execPath, [join(root, "node_modules/typescript/bin/tsc"), "-p", "tsconfig.json"], {
    cwd: dir,
    timeoutMs: 180_000,
  });
  const withLines = output.replace(/^(block\d+\.ts)/gm, (file) => `${file} (README line ${programs.find((p) => p.file === file)?.block.line})`);
  assert.equal(code, 0, `tsc found errors in README's TypeScript:\n${withLines}`);
});

test("every TypeScript block of README runs to completion, each on a database of its own", async () => {
  for (const program of programs) {
    const own = await createTestDatabase();
    try {
      await runSqlBlocks(own.sql);
      const { code, output } = await run(process.execPath, ["--import", "tsx", program.file], {
        cwd: dir,
        env: {
          ...process.env,
          DATABASE_URL: own.url,
          PORT: "0",
          OUTBOX_WEBHOOK_SECRET: `whsec_${Buffer.from("a README test secret, 32 bytes!!").toString("base64")}`,
        },
        timeoutMs: 90_000,
      });
      assert.equal(code, 0, `README's TypeScript block at line ${program.block.line} failed:\n${output}\n--- program:\n${program.source}`);
    } finally {
      await dropTestDatabase(own);
    }
  }
});
