/**
 * The HTTP receiver of `npm run bench -- --part webhook`, run as a child process so that it
 * does not share the worker's event loop: answers 204, parses each body as a receiver would,
 * and reports the events received (count and time of the last) to the parent over IPC.
 */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";

let events = 0;
let requests = 0;
let lastAt = 0;
const server = createServer((req, res) => {
  const chunks: Buffer[] = [];
  req.on("data", (c: Buffer) => chunks.push(c));
  req.on("end", () => {
    const body = JSON.parse(Buffer.concat(chunks).toString("utf8")) as unknown;
    events += Array.isArray(body) ? body.length : 1;
    requests++;
    lastAt = Date.now();
    res.writeHead(204).end();
  });
});
server.keepAliveTimeout = 60_000;
server.listen(0, "127.0.0.1", () => {
  process.send!({ port: (server.address() as AddressInfo).port });
});
const report = setInterval(() => process.send!({ events, requests, lastAt }), 20);
process.on("message", (message: { reset?: boolean; stop?: boolean }) => {
  if (message.reset) events = requests = lastAt = 0;
  if (message.stop) {
    clearInterval(report);
    server.closeAllConnections();
    server.close(() => process.exit(0));
  }
});
