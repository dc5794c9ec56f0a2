import { z } from "zod";
import { DURATION_HINT, durationMs } from "./durationMs.js";
import { ConfigError } from "./errors.js";

/** A PostgreSQL connection string: `postgres://user:password@host:port/database`. */
export const connectionStringSchema = z
  .string()
  .trim()
  .min(1, "is empty")
  .refine((value) => {
    try {
      const url = new URL(value);
      return (url.protocol === "postgres:" || url.protocol === "postgresql:") && url.hostname !== "";
    } catch {
      return false;
    }
  }, "is not a PostgreSQL connection string (expected postgres://user:password@host:5432/database)");

/** Log levels accepted by pino. */
export const logLevelSchema = z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]);

/** An environment variable holding a duration (`30s`, `7d`, or milliseconds); unset means the library default. */
function durationVar(min: number, max = Number.MAX_SAFE_INTEGER) {
  return z
    .string()
    .optional()
    .transform((value, ctx) => {
      if (value === undefined || value.trim() === "") return undefined;
      const ms = durationMs(value);
      if (ms === undefined || ms < min || ms > max) {
        const range = max === Number.MAX_SAFE_INTEGER ? `at least ${min} ms` : `from ${min} to ${max} ms`;
        ctx.addIssue({ code: "custom", message: `must be ${DURATION_HINT}, ${range}` });
        return z.NEVER;
      }
      return ms;
    });
}

/** An environment variable holding a whole number within [min, max]; unset means the library default. */
function wholeNumberVar(min: number, max: number) {
  return z
    .string()
    .optional()
    .transform((value, ctx) => {
      if (value === undefined || value.trim() === "") return undefined;
      const n = Number(value);
      if (!/^\s*\d+\s*$/.test(value) || n < min || n > max) {
        ctx.addIssue({ code: "custom", message: `must be a whole number from ${min} to ${max}` });
        return z.NEVER;
      }
      return n;
    });
}

/** Default port of `outbox worker`'s `/healthz` and `/metrics` (the usual port of Prometheus exporters of this kind). */
export const DEFAULT_HTTP_PORT = 9464;

/**
 * Environment read by the `outbox` command line. Unset worker settings keep the defaults of
 * `createOutbox` (listed in README).
 */
export const cliEnvSchema = z.object({
  /** Server to use; unset means the embedded PostgreSQL (demo only). */
  DATABASE_URL: connectionStringSchema.optional(),
  /** Log level; default `info`. */
  OUTBOX_LOG_LEVEL: logLevelSchema.default("info"),
  /** `outbox worker`: whether webhooks may target loopback and private addresses; default `true`. */
  OUTBOX_WEBHOOKS_ALLOW_PRIVATE_NETWORKS: z
    .enum(["true", "false"], { error: "must be true or false" })
    .default("true")
    .transform((value) => value === "true"),
  /** `outbox worker`: a webhook endpoint failing this long without a success is deactivated; 0 never; default 3d. */
  OUTBOX_WEBHOOKS_DEACTIVATE_AFTER: durationVar(0),
  /** `outbox worker`: port of /healthz and /metrics; `off` for none, 0 for any free port; default 9464. */
  OUTBOX_HTTP_PORT: z
    .string()
    .optional()
    .transform((value, ctx) => {
      if (value === undefined || value.trim() === "") return DEFAULT_HTTP_PORT;
      if (value.trim() === "off") return undefined;
      const n = Number(value);
      if (!/^\s*\d+\s*$/.test(value) || n > 65_535) {
        ctx.addIssue({ code: "custom", message: "must be a port from 0 to 65535, or off" });
        return z.NEVER;
      }
      return n;
    }),
  /** `outbox worker`: address the HTTP server binds; default all interfaces. */
  OUTBOX_HTTP_HOST: z.string().trim().min(1).optional(),
  /** `outbox worker`: pool of pg-outbox's own queries; default 4. */
  OUTBOX_POOL_SIZE: wholeNumberVar(2, 100),
  /** `outbox worker`: graphile-worker's pool; default 2. */
  OUTBOX_GRAPHILE_POOL_SIZE: wholeNumberVar(2, 100),
  /** `outbox worker`: safety-net poll interval; default 1s. */
  OUTBOX_POLL_INTERVAL: durationVar(10, 60_000),
  /** `outbox worker`: while busy, how long a small round's successors gather; default 50ms. */
  OUTBOX_BUSY_WAIT: durationVar(0, 1000),
  /** `outbox worker`: lease of a claimed delivery; default 30s. */
  OUTBOX_LEASE: durationVar(1000, 3_600_000),
  /** `outbox worker`: how long stopping waits for in-flight deliveries; default 10s. */
  OUTBOX_DRAIN_TIMEOUT: durationVar(0, 600_000),
  /** `outbox worker`: retention of delivered deliveries and fully delivered events; default 7d. */
  OUTBOX_RETENTION: durationVar(60_000),
  /** `outbox worker`: retention of dead deliveries; default 30d. */
  OUTBOX_DEAD_RETENTION: durationVar(60_000),
});

/** Validated CLI environment. */
export type CliEnv = z.infer<typeof cliEnvSchema>;

/**
 * Turns zod issues into one line per bad option, naming the option and what is wrong, never
 * echoing its value (a connection string carries a password).
 */
export function describeIssues(error: z.ZodError, prefix = ""): string {
  return error.issues
    // An issue of the whole object (a cross-field rule) has no path: its message stands alone.
    .map((issue) => (issue.path.length === 0 && !prefix ? issue.message : `${prefix}${issue.path.join(".") || "value"} ${issue.message}`))
    .join("; ");
}

/** Parses `schema` or throws a {@link ConfigError} with one clear line. */
export function parseConfig<T extends z.ZodType>(schema: T, input: unknown, what: string): z.infer<T> {
  const result = schema.safeParse(input);
  if (!result.success) throw new ConfigError(`invalid ${what}: ${describeIssues(result.error)}`);
  return result.data;
}
