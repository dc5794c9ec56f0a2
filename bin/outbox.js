#!/usr/bin/env node
// The `outbox` command. `npm ci` / `npm install` build dist/ through the `prepare` script.
import { existsSync } from "node:fs";

const entry = new URL("../dist/cli/main.js", import.meta.url);
if (!existsSync(entry)) {
  console.error("outbox: dist/ is missing; run `npm run build` in the pg-outbox package first");
  process.exit(70);
}
await import(entry.href);
