import { Logger as GraphileLogger } from "graphile-worker";
import type { Logger } from "../logger.js";

/** graphile-worker's logger, adapted onto a pino child (`component: "graphile-worker"`). */
export function graphileLogger(logger: Logger): GraphileLogger {
  const base = logger.child({ component: "graphile-worker" });
  return new GraphileLogger((scope) => {
    const child = base.child(scope);
    return (level, message, meta) => {
      const fields = meta ?? {};
      switch (level) {
        case "error":
          child.error(fields, message);
          break;
        case "warning":
          child.warn(fields, message);
          break;
        case "info":
          child.info(fields, message);
          break;
        default:
          child.debug(fields, message);
      }
    };
  });
}
