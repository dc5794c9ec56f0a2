/**
 * docker-compose.yml and the Dockerfile, checked without Docker (no engine here): the compose
 * file parses and wires PostgreSQL, setup, worker and receiver with healthchecks and start
 * order; the files the Dockerfile copies exist; every `outbox` command it uses exists; and its
 * commands and healthchecks work when run as plain processes against a real database.
 *
 * In the image `node bin/outbox.js` runs dist/cli/main.js, compiled from src/cli/main.ts;
 * here it runs src/cli/main.ts through tsx. Host names and ports of the compose network are
 * swapped for the test's database and free local ports.
 */
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "node:test";
import { parse } from "yaml";
import { useTestDatabase, waitFor } from "./harness.js";
import { runOutboxAsync } from "./outboxCommand.js";

const db = useTestDatabase();
const root = fileURLToPath(new URL("..", import.meta.url));

/** The parts of a compose service this test reads. */
interface Service {
  image?: string;
  build?: string;
  command?: string[];
  environment?: Record<string, string>;
  depends_on?: Record<string, { condition: string }>;
  healthcheck?: { test: string[]; interval: string; timeout: string; retries: number };
  ports?: string[];
}

const compose = parse(readFileSync(join(root, "docker-compose.yml"), "utf8"), { merge: true }) as { services: Record<string, Service> };
const services = compose.services;
const packageJson = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { bin: Record<string, string> };

test("docker-compose.yml has PostgreSQL, a setup step, the worker and the demo's receiver, with healthchecks and start order", () => {
  assert.deepEqual(Object.keys(services).sort(), ["postgres", "receiver", "setup", "worker"]);
  assert.match(services.postgres!.image!, /^postgres:1[5-9]/);
  for (const name of ["postgres", "worker", "receiver"]) {
    const check = services[name]!.healthcheck;
    assert.ok(check && ["CMD", "CMD-SHELL"].includes(check.test[0]!) && check.retries > 0, `${name} has a healthcheck`);
  }
  assert.match(services.postgres!.healthcheck!.test.join(" "), /pg_isready .*-d app/);
  assert.deepEqual(services.setup!.depends_on, { postgres: { condition: "service_healthy" } });
  assert.deepEqual(services.worker!.depends_on, { setup: { condition: "service_completed_successfully" } });
  for (const name of ["setup", "worker", "receiver"]) assert.equal(services[name]!.build, ".", `${name} runs the image the Dockerfile builds`);
  // The worker serves /healthz where its healthcheck looks, on a published port.
  const port = services.worker!.environment!.OUTBOX_HTTP_PORT ?? "9464";
  assert.ok(services.worker!.healthcheck!.test.join(" ").includes(`127.0.0.1:${port}/healthz`));
  assert.ok(services.worker!.ports!.includes(`${port}:${port}`));
  // Every service that talks to PostgreSQL reaches the compose service's database.
  const { POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB } = services.postgres!.environment!;
  for (const name of ["setup", "worker"]) {
    assert.equal(services[name]!.environment!.DATABASE_URL, `postgres://${POSTGRES_USER}:${POSTGRES_PASSWORD}@postgres:5432/${POSTGRES_DB}`);
  }
});

test("the Dockerfile copies files that exist and builds the entry point bin/outbox.js loads", () => {
  const dockerfile = readFileSync(join(root, "Dockerfile"), "utf8");
  const copies = [...dockerfile.matchAll(/^COPY (?!--from)(.+) \S+$/gm)].flatMap((m) => m[1]!.split(/\s+/));
  assert.ok(copies.length >= 6, copies.join(" "));
  for (const path of copies) assert.ok(existsSync(join(root, path)), `${path} exists`);
  assert.match(dockerfile, /^RUN npm run build$/m);
  // `npm run build` compiles src/ to dist/ (tsconfig.build.json), and bin/outbox.js loads dist/cli/main.js.
  const build = JSON.parse(readFileSync(join(root, "tsconfig.build.json"), "utf8")) as { compilerOptions: { rootDir: string; outDir: string } };
  assert.deepEqual([build.compilerOptions.rootDir, build.compilerOptions.outDir], ["src", "dist"]);
  assert.ok(existsSync(join(root, "src/cli/main.ts")));
  assert.match(readFileSync(join(root, "bin/outbox.js"), "utf8"), /\.\.\/dist\/cli\/main\.js/);
});

test("every outbox command docker-compose.yml runs is package.json's bin and a real command", async () => {
  assert.equal(packageJson.bin.outbox, "./bin/outbox.js");
  const commands = new Set<string>();
  for (const service of Object.values(services)) {
    for (const m of (service.command ?? []).join(" ").matchAll(/node (\S+) ([a-z-]+)/g)) {
      assert.equal(m[1], "bin/outbox.js");
      commands.add(m[2]!);
    }
  }
  assert.deepEqual([...commands].sort(), ["demo-receiver", "migrate", "subscribe", "worker"]);
  for (const command of commands) {
    const help = await runOutboxAsync([command, "--help"], {});
    assert.equal(help.code, 0, `outbox ${command} --help: ${help.stderr}`);
  }
});

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/** A compose command or healthcheck as a local process: `node bin/outbox.js` from source, compose names swapped. */
function localArgs(args: string[], swap: (text: string) => string): string[] {
  const outbox = `${process.execPath} --import tsx src/cli/main.ts`;
  if (args[0] === "node" && args[1] === "bin/outbox.js") return [process.execPath, "--import", "tsx", "src/cli/main.ts", ...args.slice(2).map(swap)];
  if (args[0] === "node") return [process.execPath, ...args.slice(1).map(swap)];
  if (args[0] === "sh") return ["sh", ...args.slice(1).map((a) => swap(a).replaceAll("node bin/outbox.js", outbox))];
  return args.map(swap);
}

interface Started {
  child: ChildProcess;
  output: () => string;
  exited: Promise<number | null>;
}

function start(args: string[], env: Record<string, string>): Started {
  const child = spawn(args[0]!, args.slice(1), { cwd: root, env: { ...process.env, ...env } });
  let output = "";
  child.stdout!.setEncoding("utf8").on("data", (chunk: string) => (output += chunk));
  child.stderr!.setEncoding("utf8").on("data", (chunk: string) => (output += chunk));
  return { child, output: () => output, exited: new Promise((resolve) => child.on("exit", (code) => resolve(code))) };
}

/** Runs a service's healthcheck test (exec form) once; resolves with its exit code. */
function healthcheck(service: Service, swap: (text: string) => string, env: Record<string, string>): Promise<number | null> {
  const [form, ...args] = service.healthcheck!.test;
  assert.equal(form, "CMD");
  return start(localArgs(args, swap), env).exited;
}

test("run without Docker, the setup, worker and receiver commands work, their healthchecks pass, and an event reaches the receiver", async () => {
  const workerPort = await freePort();
  const receiverPort = await freePort();
  const swap = (text: string) =>
    text
      .replace(/postgres:\/\/\S+@postgres:5432\/\S+/, db.url)
      .replaceAll("receiver:8080", `127.0.0.1:${receiverPort}`)
      .replaceAll("8080", String(receiverPort))
      .replaceAll("9464", String(workerPort));
  const envOf = (service: Service) => Object.fromEntries(Object.entries(service.environment ?? {}).map(([k, v]) => [k, swap(String(v))]));

  const setup = start(localArgs(services.setup!.command!, swap), envOf(services.setup!));
  assert.equal(await setup.exited, 0, setup.output());
  const [subscription] = await db.sql<{ kind: string; pattern: string; url: string }[]>`
    select kind, pattern, config ->> 'url' as url from outbox.subscriptions where name = 'demo-receiver'`;
  assert.deepEqual(subscription, { kind: "webhook", pattern: "*", url: `http://127.0.0.1:${receiverPort}/hooks` });

  const receiver = start(localArgs(services.receiver!.command!, swap), envOf(services.receiver!));
  const worker = start(localArgs(services.worker!.command!, swap), envOf(services.worker!));
  try {
    await waitFor(async () => (await healthcheck(services.receiver!, swap, envOf(services.receiver!))) === 0, "the receiver's healthcheck to pass", 30_000);
    await waitFor(async () => (await healthcheck(services.worker!, swap, envOf(services.worker!))) === 0, "the worker's healthcheck to pass", 30_000);

    await db.sql`select outbox.emit('hello.world', '{"hi": 1}')`;
    await waitFor(async () => /webhook got hello\.world/.test(receiver.output()), "the receiver to print the event", 30_000).catch((error: Error) => {
      throw new Error(`${error.message}\nreceiver: ${receiver.output()}\nworker: ${worker.output()}`);
    });
  } finally {
    receiver.child.kill("SIGTERM");
    worker.child.kill("SIGTERM");
  }
  // Both stop on SIGTERM, as `docker stop` asks them to.
  assert.equal(await receiver.exited, 0, receiver.output());
  assert.equal(await worker.exited, 0, worker.output());
});
