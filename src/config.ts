import { z } from "zod";
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

/** Environment read by the `outbox` command line. */
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
});

/** Validated CLI environment. */
export type CliEnv = z.infer<typeof cliEnvSchema>;

/**
 * Turns zod issues into one line per bad option, naming the option and what is wrong, never
 * echoing its value (a connection string carries a password).
 */
export function describeIssues(error: z.ZodError, prefix = ""): string {
  return error.issues
    .map((issue) => `${prefix}${issue.path.join(".") || "value"} ${issue.message}`)
    .join("; ");
}

/** Parses `schema` or throws a {@link ConfigError} with one clear line. */
export function parseConfig<T extends z.ZodType>(schema: T, input: unknown, what: string): z.infer<T> {
  const result = schema.safeParse(input);
  if (!result.success) throw new ConfigError(`invalid ${what}: ${describeIssues(result.error)}`);
  return result.data;
}
