import postgres, { type Options, type Sql } from "postgres";
import type { Logger } from "../logger.js";

/**
 * A postgres.js client that replaces itself, with fresh connections, whenever one of its
 * connections closes, plus LISTEN on a connection of its own that is replaced and listens
 * again the same way.
 *
 * Why: postgres.js 3.4.9 (the newest release) batches small writes behind a `setImmediate`
 * and, when a socket closes while such a write is pending, cancels the timer without
 * forgetting it. That connection object can never write again: its next start-up message
 * stays in the buffer, so its next query waits for ever (reproduced here by terminating the
 * worker's backends under load; the same defect is described in porsager/postgres #1208 and
 * LanternOps/breeze #3225). A new client has new connection objects, so replacing the client
 * on every close means a poisoned connection is never used again. Queries already running on
 * the old client finish on it (it is ended with a grace period).
 */
export interface RenewingClient {
  /** Use it as a postgres.js client: every call goes to the current client. */
  readonly sql: Sql;
  /**
   * Calls `fn` with the payload of every notification on `channel`. After the listening
   * connection is replaced, `onRelisten` (see {@link renewingClient}) is called: a
   * notification sent meanwhile was missed.
   */
  listen(channel: string, fn: (payload: string) => void): Promise<void>;
  /**
   * Replaces the client now (for a query that got no answer in time: its connection is not
   * to be trusted). Does nothing once ended.
   */
  renew(reason: string): void;
  /** How many times the client or the listener was replaced (for tests and logs). */
  readonly renewals: number;
  /** Ends the current client and listener; the client is not replaced after this. */
  end(options?: { timeout?: number }): Promise<void>;
}

/** Options of {@link renewingClient}, besides postgres.js's own. */
export interface RenewingClientOptions {
  logger: Logger;
  /** Called after the listener was replaced and listens again. Default: nothing. */
  onRelisten?: () => void;
  /** Called when the client was replaced (not the listener). Default: nothing. */
  onRenew?: () => void;
  /** Grace period, in seconds, for queries still running on a replaced client; default 5. */
  endTimeout?: number;
}

/** A {@link RenewingClient} on `url`. */
export function renewingClient(url: string, options: Options<Record<string, never>>, extra: RenewingClientOptions): RenewingClient {
  const endTimeout = extra.endTimeout ?? 5;
  let ending = false;
  let renewals = 0;

  const open = (): Sql => {
    const client: Sql = postgres(url, {
      ...options,
      onclose: () => {
        if (client === current) renew("a database connection closed");
      },
    });
    return client;
  };
  let current = open();
  const renew = (reason: string) => {
    if (ending) return;
    renewals++;
    extra.logger.info({ reason }, "replacing the database client");
    const old = current;
    current = open();
    extra.onRenew?.();
    void old.end({ timeout: endTimeout }).catch(() => undefined);
  };

  const channels = new Map<string, Array<(payload: string) => void>>();
  let listener: Sql | undefined;
  let relistenTimer: NodeJS.Timeout | undefined;
  const openListener = (): Sql => {
    const client: Sql = postgres(url, {
      ...options,
      max: 1,
      idle_timeout: 0,
      max_lifetime: null,
      // postgres.js's own listen() uses this option too; it is not in its types.
      ...({ onnotify: (channel: string, payload: string) => channels.get(channel)?.forEach((fn) => fn(payload)) } as object),
      onclose: () => {
        if (ending || client !== listener) return;
        renewals++;
        extra.logger.info("the listening connection closed: listening again on a new one");
        listener = undefined;
        void client.end({ timeout: 0 }).catch(() => undefined);
        relisten(0);
      },
    });
    return client;
  };
  const listenAll = async (client: Sql) => {
    await client.unsafe([...channels.keys()].map((c) => `listen "${c.replace(/"/g, '""')}"`).join("; "));
  };
  // Listens again on a new connection, retrying while the database cannot be reached.
  const relisten = (delayMs: number) => {
    clearTimeout(relistenTimer);
    relistenTimer = setTimeout(() => {
      if (ending || listener) return;
      const client = openListener();
      listener = client;
      listenAll(client).then(
        () => extra.onRelisten?.(),
        (error: unknown) => {
          extra.logger.warn({ err: error }, "could not listen again; retrying");
          if (listener === client) listener = undefined;
          void client.end({ timeout: 0 }).catch(() => undefined);
          relisten(Math.min(5000, Math.max(200, delayMs * 2)));
        },
      );
    }, delayMs);
    relistenTimer.unref();
  };

  const end = async (endOptions?: { timeout?: number }) => {
    ending = true;
    clearTimeout(relistenTimer);
    await Promise.all([current.end(endOptions), listener?.end({ timeout: 0 })]);
  };
  const sql = new Proxy(function renewingSql() {} as unknown as Sql, {
    apply: (_target, _this, args: unknown[]) => (current as unknown as (...a: unknown[]) => unknown)(...args),
    get: (_target, property) => {
      if (property === "end") return end; // ending through the proxy must stop the renewals too
      const value = (current as unknown as Record<PropertyKey, unknown>)[property];
      return typeof value === "function" ? value.bind(current) : value;
    },
  });

  return {
    sql,
    renew,
    get renewals() {
      return renewals;
    },
    async listen(channel, fn) {
      const known = channels.get(channel);
      if (known) {
        known.push(fn);
        return;
      }
      channels.set(channel, [fn]);
      listener ??= openListener();
      await listener.unsafe(`listen "${channel.replace(/"/g, '""')}"`);
    },
    end,
  };
}
