/**
 * Progress of a long step of a command (`outbox demo` starting PostgreSQL, waiting for
 * deliveries). In a terminal one line shows a spinner, the seconds so far and a detail that
 * may change (`3/4 delivered`); otherwise, for logs, a line every 5 s, so that the output of
 * a CI run stays short.
 */

const SPINNER = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

/**
 * Runs `work` while showing `label` with the time it has taken and `detail()` (default none).
 * Ends the line with the total time, or with the error's message when `work` fails.
 */
export async function withProgress<T>(label: string, work: () => Promise<T>, detail: () => string = () => ""): Promise<T> {
  const started = Date.now();
  const elapsed = () => `${((Date.now() - started) / 1000).toFixed(1)} s`;
  const tty = Boolean(process.stdout.isTTY);
  let tick = 0;
  const show = () => {
    const extra = detail();
    if (tty) process.stdout.write(`\r\x1b[K${SPINNER[tick++ % SPINNER.length]} ${label} ${elapsed()}${extra ? `  ${extra}` : ""}`);
    else console.log(`  … ${label} ${elapsed()}${extra ? `  ${extra}` : ""}`);
  };
  if (tty) show();
  else console.log(`\n▸ ${label} …`);
  const timer = setInterval(show, tty ? 100 : 5000);
  try {
    const result = await work();
    const extra = detail();
    if (tty) process.stdout.write(`\r\x1b[K▸ ${label} done in ${elapsed()}${extra ? `  ${extra}` : ""}\n`);
    else console.log(`  done in ${elapsed()}${extra ? `  ${extra}` : ""}`);
    return result;
  } catch (error) {
    if (tty) process.stdout.write(`\r\x1b[K▸ ${label} failed after ${elapsed()}\n`);
    throw error;
  } finally {
    clearInterval(timer);
  }
}
