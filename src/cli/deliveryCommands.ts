/** `outbox deliveries`, `outbox redeliver`, `outbox replay`. */
import { Option, type Command } from "commander";
import { deliveryStatuses, type DeliveryRow, type DeliveryStatus } from "../db/deliveries.js";
import { sinceTime, wholeNumber } from "./argumentParsers.js";
import { print, usageError, withOutbox } from "./context.js";

/** One line per delivery, columns aligned: id, subscription, status, topic, attempts, when, and the last failure. */
function deliveryTable(rows: DeliveryRow[]): string {
  const width = (pick: (r: DeliveryRow) => string) => Math.max(...rows.map((r) => pick(r).length));
  const idW = width((r) => r.id);
  const subW = width((r) => r.subscription);
  const topicW = width((r) => r.topic ?? "");
  return rows
    .map((row) => {
      const when =
        row.status === "delivered"
          ? `delivered ${row.deliveredAt?.toISOString() ?? "-"}`
          : row.status === "retrying" || row.status === "pending"
            ? `next attempt ${row.nextAttemptAt.toISOString()}`
            : `updated ${row.updatedAt.toISOString()}`;
      const failure =
        row.status === "delivered" ? "" : `${row.lastStatus ? `  HTTP ${row.lastStatus}` : ""}${row.lastError ? `  ${row.lastError}` : ""}`;
      return `${row.id.padStart(idW)}  ${row.subscription.padEnd(subW)}  ${row.status.padEnd(10)}  ${(row.topic ?? "").padEnd(topicW)}  attempts=${row.attempts}  ${when}${failure}`;
    })
    .join("\n");
}

/** Adds the delivery commands to the program. */
export function registerDeliveryCommands(program: Command): void {
  program
    .command("deliveries")
    .description("list deliveries, newest first")
    .addOption(new Option("--status <status>", "only this status").choices(deliveryStatuses))
    .option("--subscription <name>", "only this subscription")
    .option("--limit <n>", "at most this many; default 50", wholeNumber(1, 100_000), 50)
    .option("--json", "print JSON")
    .addHelpText("after", "\nExample: outbox deliveries --status dead --subscription crm")
    .action(async (opts: { status?: DeliveryStatus; subscription?: string; limit: number; json?: boolean }) => {
      const rows = await withOutbox((outbox) =>
        outbox.deliveries({
          ...(opts.status ? { status: opts.status } : {}),
          ...(opts.subscription ? { subscription: opts.subscription } : {}),
          limit: opts.limit,
        }),
      );
      print(rows, Boolean(opts.json), () => (rows.length === 0 ? "no deliveries" : deliveryTable(rows)));
    });

  program
    .command("redeliver <delivery-id...>")
    .description("put dead or delivered deliveries back in line (attempts 0), all or none")
    .option("--json", "print the result as JSON")
    .action(async (ids: string[], opts: { json?: boolean }) => {
      const bad = ids.find((id) => !/^[1-9]\d{0,18}$/.test(id));
      if (bad !== undefined) {
        throw usageError(`delivery id ${JSON.stringify(bad)} is not a number: take the ids from \`outbox deliveries\``);
      }
      const n = await withOutbox((outbox) => outbox.redeliver(ids));
      print({ redelivered: ids }, Boolean(opts.json), () => `outbox: ${n} ${n === 1 ? "delivery" : "deliveries"} back in line: ${ids.join(", ")}`);
    });

  program
    .command("replay <subscription>")
    .description("put a subscription's dead and delivered deliveries since a time back in line, and create the ones it missed while inactive")
    .requiredOption("--since <time>", "ISO 8601 time (2026-12-01T10:00:00Z) or a duration back from now (30m, 1h, 2d)", (v: string) => sinceTime(v))
    .option("--json", "print the result as JSON")
    .action(async (subscription: string, opts: { since: Date; json?: boolean }) => {
      const n = await withOutbox((outbox) => outbox.replay(subscription, opts.since));
      print({ subscription, since: opts.since.toISOString(), deliveries: n }, Boolean(opts.json), () =>
        `outbox: ${n} ${n === 1 ? "delivery" : "deliveries"} of ${subscription} since ${opts.since.toISOString()} back in line`,
      );
    });
}
