/**
 * A neutral CPU load for the write-path benchmark's control: child processes that do nothing
 * but spin, holding their CPU use to a set rate. Run beside the writers in place of a worker
 * that used the same CPU, it tells apart what the worker costs the write path through the
 * database (locks, notifications, I/O) from what any process of the same appetite costs on
 * shared cores.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";

// Each child spins in 0.5 ms steps while its own CPU time is below its share of the wall
// time elapsed, and sleeps 1 ms otherwise (Atomics.wait: no timer granularity of the event
// loop). Counting its own CPU time, not the wall time of its spins, keeps the rate true when
// the writers preempt it. On SIGTERM it prints the CPU it used, in µs.
const SPINNER = `
const share = Number(process.argv[1]);
const start = performance.now();
const cpu0 = process.cpuUsage();
const used = () => { const u = process.cpuUsage(cpu0); return u.user + u.system; };
const nap = new Int32Array(new SharedArrayBuffer(4));
process.on("SIGTERM", () => { process.stdout.write(String(used())); process.exit(0); });
// Ends with its parent: a benchmark that dies must not leave cores spinning.
process.stdin.on("end", () => process.exit(0)).resume();
const loop = () => {
  const until = performance.now() + 50;
  while (performance.now() < until) {
    if (used() < share * (performance.now() - start) * 1000) {
      const t = performance.now();
      while (performance.now() - t < 0.5) {}
    } else Atomics.wait(nap, 0, 0, 1);
  }
  setImmediate(loop); // lets SIGTERM and the end of stdin be handled
};
loop();
`;

/** A running load; `stop()` ends it and returns the CPU it used, in µs. */
export interface CpuLoad {
  stop(): Promise<number>;
}

/** Starts a load of `microsPerSecond` µs of CPU per wall second, on one child per started core. */
export function cpuLoadStart(microsPerSecond: number): CpuLoad {
  const cores = Math.max(1, Math.ceil(microsPerSecond / 1e6));
  const children: ChildProcess[] = Array.from({ length: cores }, () =>
    spawn(process.execPath, ["-e", SPINNER, String(microsPerSecond / 1e6 / cores)], { stdio: ["pipe", "pipe", "inherit"] }),
  );
  return {
    async stop() {
      const used = await Promise.all(
        children.map(async (child) => {
          let out = "";
          child.stdout!.on("data", (chunk: Buffer) => (out += chunk.toString()));
          const exited = once(child, "exit");
          child.kill("SIGTERM");
          await exited;
          return Number(out) || 0;
        }),
      );
      return used.reduce((a, b) => a + b, 0);
    },
  };
}
