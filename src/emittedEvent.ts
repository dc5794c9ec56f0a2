/**
 * Typed app events: an app describes its emitted topics as a map from topic to payload type
 * (`createOutbox<{ "order.placed": { orderId: string } }>(…)`); `emit` then checks the data it
 * is given for those topics, and `handle` on one of those topics types `event.data`. Topics
 * and patterns the map lacks stay allowed, with `unknown` data.
 */
import type { OutboxEvent } from "./transports/transport.js";

/**
 * The envelope of an event written by `emit` (or `outbox.emit` in SQL): `data` is what was
 * emitted, as it came back from JSON (so declare payloads with JSON types: a `Date` arrives
 * as a string); `key` is emit's key when one was given. Context fields appear when the
 * writing transaction set them.
 */
export interface EmittedEvent<TTopic extends string = string, TData = unknown> {
  /** The event's id, the same on every attempt. */
  id: string;
  /** The topic it was emitted on. */
  type: TTopic;
  /** Start of the writing transaction, ISO 8601 UTC. */
  time: string;
  /** What was emitted. */
  data: TData;
  /** emit's key; absent when none was given. */
  key?: string;
  /** `outbox.tenant` of the writing transaction, when set. */
  tenant?: string;
  /** `outbox.actor` of the writing transaction, when set. */
  actor?: string;
  /** `outbox.correlation_id` of the writing transaction, when set. */
  correlation_id?: string;
  /** `outbox.causation_id` of the writing transaction, when set. */
  causation_id?: string;
  /** `outbox.traceparent` of the writing transaction, when set. */
  traceparent?: string;
}

/**
 * A topic map: app topic → payload type, e.g. `{ "order.placed": { orderId: string } }`.
 * Keys are topics, never patterns (emit refuses wildcards). The default map is empty.
 */
export type TopicMap = object;

/** A topic for `emit`: one of the map's (editors suggest them) or any other string. */
export type TopicName<TTopics extends TopicMap> = (keyof TTopics & string) | (string & {});

/** The data `emit` takes on `TTopic`: the map's type for it, `unknown` for a topic the map lacks. */
export type TopicData<TTopics extends TopicMap, TTopic extends string> = string extends TTopic
  ? unknown
  : TTopic extends keyof TTopics
    ? TTopics[TTopic]
    : unknown;

/**
 * The event a handler on `TPattern` receives: for a topic of the map, its {@link EmittedEvent}
 * with typed `data`; for a pattern with wildcards or any other topic, {@link OutboxEvent}
 * (capture events can be typed with `InferCaptureEvent` instead).
 */
export type PatternEvent<TTopics extends TopicMap, TPattern extends string> = string extends TPattern
  ? OutboxEvent
  : TPattern extends keyof TTopics
    ? EmittedEvent<TPattern, TTopics[TPattern]>
    : OutboxEvent;
