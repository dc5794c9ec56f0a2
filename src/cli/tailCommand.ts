/** `outbox tail`: prints events as they are committed. */
import type { Command } from "commander";
import { eventCursorNow, eventReadCommitted, type CommittedEvent, type EventCursor } from "../db/events.js";
import { createOutbox } from "../outbox.js";
import { PATTERN_HINT, PATTERN_SYNTAX } from "../topicMatches.js";
import type { OutboxEvent } from "../transports/transport.js";
import { readEnv, requireDatabaseUrl, usageError } from "./context.js";

/**
 * Between reads when nothing new came. A poll rather than LISTEN outbox_wake: writes notify
 * only while some worker is idle, so a busy system would look silent to a listener.
 */
const POLL_MS = 200;
/** Stored rows (statements) per read. */
const BATCH = 500;

function textLine(event: CommittedEvent): string {
  const env = JSON.parse(event.payload) as OutboxEvent;
  const body = env.op === "update" ? { changed: env.changed, new: env.new } : (env.data ?? env.new ?? env.old ?? null);
  const text = JSON.stringify(body);
  const short = text.length > 200 ? `${text.slice(0, 199)}…` : text;
  const key = env.key === undefined || env.key === null ? "" : `  key=${JSON.stringify(env.key)}`;
  return `${env.time}  ${env.type}${key}  ${short}`;
}

/** Adds `tail` to the program. */
export function registerTailCommand(program: Command): void {
  program
    .command("tail")
    .description("print events as they are committed, oldest retained first (Ctrl-C stops, exit 0)")
    .option("--pattern <pattern>", "only topics matching this pattern (public.users.*, order.**)")
    .option("--from-now", "only events committed after tail started")
    .option("--json", "one JSON envelope per line")
    .addHelpText("after", "\nExample: outbox tail --from-now --pattern 'public.orders.*' --json | jq .new")
    .action(async (opts: { pattern?: string; fromNow?: boolean; json?: boolean }) => {
      if (opts.pattern !== undefined && !PATTERN_SYNTAX.test(opts.pattern)) {
        throw usageError(`--pattern ${JSON.stringify(opts.pattern)} is invalid: ${PATTERN_HINT}`);
      }
      const outbox = createOutbox({ connectionString: requireDatabaseUrl(readEnv()), maxConnections: 2 });
      let stopping = false;
      let wake: () => void = () => undefined;
      const stop = () => {
        stopping = true;
        wake();
      };
      process.once("SIGINT", stop);
      process.once("SIGTERM", stop);
      // A closed pipe (`outbox tail | head`) ends the tail, quietly.
      process.stdout.on("error", stop);
      try {
        let cursor: EventCursor = opts.fromNow ? await eventCursorNow(outbox.sql) : { lastId: "0", xmax: null, xip: [] };
        console.error(`outbox: tailing ${opts.fromNow ? "events committed from now on" : "events"}${opts.pattern ? ` matching ${opts.pattern}` : ""} (Ctrl-C to stop)`);
        while (!stopping) {
          const read = await eventReadCommitted(outbox.sql, cursor, { pattern: opts.pattern ?? null, limit: BATCH });
          cursor = read.cursor;
          for (const event of read.events) {
            // Raw newlines can only be whitespace in JSON text (inside strings they are
            // escaped): dropping them keeps one event per line, digits intact.
            process.stdout.write(`${opts.json ? event.payload.replace(/[\r\n]+/g, " ") : textLine(event)}\n`);
          }
          if (!read.more && !stopping) {
            await new Promise<void>((resolve) => {
              wake = resolve;
              setTimeout(resolve, POLL_MS);
            });
          }
        }
      } finally {
        process.off("SIGINT", stop);
        process.off("SIGTERM", stop);
        await outbox.close();
      }
    });
}
