/** pg-outbox: turn Postgres writes into reliably delivered events. */
export { createOutbox, type Outbox, type OutboxOptions } from "./outbox.js";
export type { CaptureOptions, CaptureRow } from "./db/captures.js";
export type { DrizzleExecutor, EmitClient, EventRow, PgQueryable, Queryable } from "./db/events.js";
export { migrate, migrationStatusRead, type MigrationStatus } from "./db/migrate.js";
export type { DeliveryRow, DeliveryListFilter, DeliveryStatus } from "./db/deliveries.js";
export type { SubscriptionRow } from "./db/subscriptions.js";
export { CapturedEvents, type EventPredicate } from "./captureEvents.js";
export { topicMatches } from "./topicMatches.js";
export { enableCaptureSql, disableCaptureSql, subscriptionSql, sqlLiteral } from "./migrationSql.js";
export type { InferCaptureEvent, CaptureEventRow, CaptureTopic, JsonOf } from "./inferCaptureEvent.js";
export type { OutboxEvent } from "./transports/transport.js";
export type { EmittedEvent, TopicMap, TopicName, TopicData, PatternEvent } from "./emittedEvent.js";
export { NonRetryableError, type HandlerContext } from "./transports/handler.js";
export { startEmbeddedPostgres, type EmbeddedServer, type EmbeddedOptions } from "./db/embeddedPostgres.js";
export { OutboxError, ConfigError, AddressRefusedError, type OutboxErrorCode } from "./errors.js";
export { webhookConfigSchema, webhookConfigProblems, type WebhookConfig } from "./transports/webhookConfig.js";
export { webhookSignature, webhookBatchId } from "./transports/webhook.js";
export { createLogger, type Logger, type LoggerOptions } from "./logger.js";
