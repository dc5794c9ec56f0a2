/** Running the real `outbox` command (through tsx, from source) in tests. */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";

/** The outcome of a finished `outbox` run. */
export interface CommandResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

function commandEnv(env: Record<string, string | undefined>): NodeJS.ProcessEnv {
  // No /metrics port unless a test asks: test files run in parallel, and two workers on the
  // default port would collide.
  return { ...process.env, OUTBOX_LOG_LEVEL: "error", OUTBOX_HTTP_PORT: "off", ...env };
}

/** Runs `outbox <args>` to completion. */
export function runOutbox(args: string[], env: Record<string, string | undefined>): CommandResult {
  const result = spawnSync(process.execPath, ["--import", "tsx", "src/cli/main.ts", ...args], {
    encoding: "utf8",
    env: commandEnv(env),
    timeout: 60_000,
  });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

/** Runs `outbox <args>` to completion without blocking the test's event loop (for running several at once). */
export async function runOutboxAsync(args: string[], env: Record<string, string | undefined>): Promise<CommandResult> {
  const command = startOutboxCommand(args, env);
  const code = await command.exited;
  return { code, stdout: command.stdout(), stderr: command.stderr() };
}

/** A long-running `outbox` process (tail, worker) whose output is collected as it comes. */
export interface RunningCommand {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** Resolves with the exit code (null when killed by a signal). */
  exited: Promise<number | null>;
}

/** Starts `outbox <args>` without waiting for it. */
export function startOutboxCommand(args: string[], env: Record<string, string | undefined>): RunningCommand {
  const child = spawn(process.execPath, ["--import", "tsx", "src/cli/main.ts", ...args], { env: commandEnv(env) });
  let out = "";
  let err = "";
  child.stdout.setEncoding("utf8").on("data", (chunk: string) => (out += chunk));
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => (err += chunk));
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  return { child, stdout: () => out, stderr: () => err, exited };
}
