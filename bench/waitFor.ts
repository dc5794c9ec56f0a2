/** Resolves once `cond()` holds (checked every 5 ms), or rejects after `ms`, naming `what`. */
export function waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = performance.now() + ms;
  return new Promise((resolve, reject) => {
    const check = () => {
      if (cond()) resolve();
      else if (performance.now() > deadline) reject(new Error(`timed out waiting for ${what}`));
      else setTimeout(check, 5);
    };
    check();
  });
}
