-- Event identity and context: small helpers shared by the capture triggers, emit and the
-- events view.

-- The position of an event is `_events.id << 16 | index in the row's array`: one stored row
-- holds a whole statement's changes (chunked), and positions stay one monotonic bigint.
--
-- The public uuid is derived from the position and the event's time, in the UUIDv7 layout
-- (48 bits of Unix milliseconds, then the position in the 74 "random" bits). It is therefore
-- stable across attempts and reads, time-ordered, costs nothing on the write path (no
-- gen_random_uuid, no uuid index) and can be turned back into the position.
-- (`at time zone 'UTC'` keeps the body immutable, as declared, so the planner inlines it:
-- extract() from a timestamptz is only stable.)
create or replace function outbox._event_uuid(p_time timestamptz, p_position bigint)
returns uuid
language sql immutable strict parallel safe
as $$
  select (
    lpad(to_hex(floor(extract(epoch from p_time at time zone 'UTC') * 1000)::bigint), 12, '0')
    || '7'
    || lpad(to_hex((p_position >> 62) & 1), 3, '0')
    || to_hex((p_position & 4611686018427387903) | (-9223372036854775807 - 1))
  )::uuid
$$;

-- Inverse of _event_uuid: the position an event id stands for.
create or replace function outbox._event_position(p_id uuid)
returns bigint
language sql immutable strict parallel safe
as $$
  select (('x' || right(replace(p_id::text, '-', ''), 16))::bit(64)::bigint & 4611686018427387903)
       | ((('x' || substr(replace(p_id::text, '-', ''), 14, 3))::bit(12)::bigint & 1) << 62)
$$;

-- The context an app sets with `set local outbox.actor = '…'` and friends, read once per
-- statement. Null when nothing is set, so the common case stores nothing.
create or replace function outbox._context()
returns jsonb
language sql stable parallel safe
as $$
  select nullif(jsonb_strip_nulls(jsonb_build_object(
    'tenant', nullif(current_setting('outbox.tenant', true), ''),
    'actor', nullif(current_setting('outbox.actor', true), ''),
    'correlation_id', nullif(current_setting('outbox.correlation_id', true), ''),
    'causation_id', nullif(current_setting('outbox.causation_id', true), ''),
    'traceparent', nullif(current_setting('outbox.traceparent', true), '')
  )), '{}'::jsonb)
$$;
