import type { Sql } from "postgres";

/**
 * Retention (DESIGN.md guarantee 6): deletes delivered deliveries and fully delivered events
 * older than `retentionMs`, and dead deliveries older than `deadRetentionMs`, in batches of
 * `batchSize` so no statement holds locks for long. Returns the number of rows removed.
 */
export async function pruneOnce(sql: Sql, retentionMs: number, deadRetentionMs: number, batchSize = 5000, maxBatches = 200): Promise<number> {
  let total = 0;
  for (let i = 0; i < maxBatches; i++) {
    const [row] = await sql<{ n: number }[]>`
      select outbox._prune(
        now() - make_interval(secs => ${retentionMs / 1000}),
        now() - make_interval(secs => ${deadRetentionMs / 1000}),
        ${batchSize}) as n`;
    const n = row?.n ?? 0;
    total += n;
    if (n < batchSize) break;
  }
  return total;
}
