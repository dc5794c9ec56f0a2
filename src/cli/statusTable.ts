import type { OutboxStatus } from "../db/status.js";

/**
 * `outbox status` as text: the dispatch line, one row per subscription, one line per
 * captured table. `outbox demo` prints the same table at its end.
 */
export function statusTable(status: OutboxStatus): string {
  const lines = [
    `dispatch: ${status.dispatch.undispatchedEvents} events waiting, lag ${status.dispatch.lagSeconds ?? 0} s, ${status.dispatch.transactionsInFlight} transactions in flight`,
    "subscription            kind     active  pending  retrying  delivering  dead  delivered/1h  oldest pending",
    ...status.subscriptions.map(
      (s) =>
        `${s.subscription.padEnd(23)} ${s.kind.padEnd(8)} ${String(s.active).padEnd(7)} ${String(s.pending).padStart(7)} ${String(s.retrying).padStart(9)} ${String(s.delivering).padStart(11)} ${String(s.dead).padStart(5)} ${String(s.deliveredLastHour).padStart(13)}  ${s.oldestPendingAgeSeconds === null ? "-" : `${Math.round(s.oldestPendingAgeSeconds)} s`}${s.disabledReason ? `  (${s.disabledReason})` : ""}`,
    ),
    ...status.captures.map((c) => `capture ${c.schemaName}.${c.tableName}: ${c.health}`),
  ];
  return lines.join("\n");
}
