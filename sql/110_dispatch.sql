-- Dispatch: turns committed events into one delivery row per (event, matching subscription).

-- The state row exists from the start: deleting or renaming a subscription updates it to
-- exclude a concurrent round (see tg_subscriptions__cascade), which a missing row would not.
insert into outbox._dispatch_state (id) values (1) on conflict do nothing;

-- The deliveries the events of the given `_events` rows owe: one row per (event, matching
-- active subscription, or only `p_subscription` when given, active or not). Matching is
-- DESIGN.md's: topic pattern, tenant (a subscription with a tenant gets only that tenant's
-- events), and the jsonpath filter over the envelope. Shared by dispatch and replay.
-- (Until migration 0023 it also returned each match's event and image, for dispatch to build
-- envelopes from: that cost statements of many rows twice the database time per event.)
drop function if exists outbox._event_matches(bigint[], text);
create or replace function outbox._event_matches(p_event_ids bigint[], p_subscription text default null)
returns table (event_id uuid, event_position bigint, subscription text, order_key text)
language sql stable
as $$
  -- Materialized: each pattern is turned into its regex once, not once per event (inlined,
  -- the call sat in the join condition: 12 µs for every event and subscription, measured).
  -- A pattern without wildcards (such as public.users.insert) is compared as text: the
  -- regex cost about 2 µs per event and subscription, 6% of dispatch (measured with perf).
  with subs as materialized (
    select s.name,
           case when strpos(s.pattern, '*') = 0 then s.pattern end as exact,
           case when strpos(s.pattern, '*') > 0 then outbox._pattern_regex(s.pattern) end as regex,
           s.tenant, s.filter, s.ordered
    from outbox.subscriptions s
    where (p_subscription is null and s.active) or s.name = p_subscription
  ),
  events as (
    select e as event, i.image, (e.id << 16) + i.ord - 1 as position, outbox._event_topic(e) as topic
    from outbox._events e
    cross join lateral json_array_elements(e.rows) with ordinality i(image, ord)
    where e.id = any(p_event_ids)
  ),
  images as (
    select ev.*, outbox._image_row((ev.event).op, ev.image) as row_image
    from events ev
  )
  select
    outbox._event_uuid((i.event).created_at, i.position),
    i.position,
    s.name,
    case when s.ordered then
      case (i.event).op
        when 'emit' then 'emit:' || (i.event).emit_key
        else (i.event).schema_name || '.' || (i.event).table_name || ':'
             || outbox._event_key(i.event, i.row_image)::jsonb::text
      end
    end
  from images i
  -- A null regex (an exact pattern) never calls the regex (strict): false or null is no match.
  join subs s on i.topic = s.exact or ('.' || i.topic) ~ s.regex
  where (s.tenant is null or s.tenant = outbox._event_tenant(i.event, i.row_image))
    and (s.filter is null
         or coalesce(jsonb_path_match(outbox._envelope(i.event, i.image, i.position), s.filter, '{}', true), false))
$$;

-- One dispatch round (DESIGN.md guarantee 3: no skipped events). Call it in a REPEATABLE
-- READ transaction while holding the dispatcher lock, so everything below sees one snapshot
-- and pg_current_snapshot() is that snapshot. It reads
--   (a) rows with id > last_id, in id order, up to about p_max_events events, and
--   (b) rows with id <= last_id whose transaction was still in flight at the previous read
--       (in that read's xip list, or at or above its xmax: the id was taken before the
--       transaction got its xid),
-- writes their deliveries, and saves last_id with this snapshot's xmax and xip in the same
-- transaction. A late transaction's events are picked up when it commits; nobody waits.
--
-- Deliveries for p_claim subscriptions (served by the calling worker, unordered, without a
-- concurrency limit) are written already claimed by p_worker, at most p_claim_limit per
-- subscription, and returned with their envelopes (once per event; null on the event's
-- further rows): the hot path skips a claim round trip and an UPDATE per delivery. Every
-- returned row repeats the round's counts; a round that claimed nothing returns one row with
-- null delivery columns.
--
-- Those of p_settle (a subset of p_claim: in-process handlers) are written as delivered, on
-- their first attempt: the worker runs them before it commits this transaction, and puts the
-- ones that failed or did not finish in time back to delivering with `_delivery_hold` first.
-- A delivery is then written once instead of inserted and updated (the update was a quarter
-- of the database time per delivered event, measured). If the worker dies or the transaction
-- fails, none of it was written, the cursor did not move, and the events are read again.
drop function if exists outbox._dispatch(int);
drop function if exists outbox._dispatch(int, text, text[], int, int);
create or replace function outbox._dispatch(
  p_max_events int default 5000,
  p_worker text default null,
  p_claim text[] default '{}',
  p_claim_limit int default 0,
  p_lease_ms int default 30000,
  p_settle text[] default '{}')
returns table (
  events int, deliveries int, last_id bigint,
  delivery_id bigint, subscription text, event_id uuid, event_position bigint, payload text, settle boolean)
language plpgsql
set search_path = pg_catalog, pg_temp
-- Plan each statement once per session: with custom plans (the default for the first
-- executions, and for good when the planner rates the generic plan dearer) every round was
-- planned again, half of a one-event round's time (2.6 ms against 1.3 ms measured here).
set plan_cache_mode = force_generic_plan
-- Every table here is read by index. A generic plan is made once per session, from the sizes
-- the tables had then (often empty: a new worker on a new database) and kept until the next
-- ANALYZE; it read `_events` by `id = any(...)` with a sequential scan, so each round scanned
-- the whole table (measured: 1,334 rows discarded per round after 8 s of single-row writes,
-- and growing with the retained events). Without sequential scans the plan cannot go there.
-- A small table with no usable index (subscriptions) is still scanned, at a cost the planner
-- rates as huge, which would start JIT compilation (a second per round, measured): no JIT.
set enable_seqscan = off
set jit = off
as $$
-- The output columns share names with deliveries' columns; in queries, columns win.
#variable_conflict use_column
declare
  v_state outbox._dispatch_state;
  v_snapshot pg_snapshot := pg_current_snapshot();
  v_ids bigint[];
  v_new_last bigint;
  v_events int;
  v_deliveries int;
  v_claimed bigint[];
  v_claimed_positions bigint[];
  v_claimed_subscriptions text[];
  v_claimed_event_ids uuid[];
  v_claimed_settle boolean[];
begin
  select * into v_state from outbox._dispatch_state s where s.id = 1 for update;
  if not found then
    insert into outbox._dispatch_state (id) values (1) returning * into v_state;
  end if;

  -- A saved snapshot ahead of this cluster's transaction counter means the database was
  -- restored from a dump into another cluster (DESIGN.md guarantee 8): transaction ids
  -- restarted. Every restored event committed before the dump, so neither the saved xip list
  -- nor xids from the old cluster mean anything here; left as they are, those xids would look
  -- in flight (at or above the next saved xmax) and be read again on every round. They get a
  -- committed, ancient xid once, and the saved snapshot is dropped; events of this cluster
  -- (ids above every restored one) are read by the normal rule.
  if v_state.snapshot_xmax > pg_snapshot_xmax(v_snapshot) then
    update outbox._events e set xid = '3'::xid8 where e.xid >= pg_snapshot_xmax(v_snapshot);
    update outbox._dispatch_state s set snapshot_xmax = null, snapshot_xip = '{}', updated_at = now()
    where s.id = 1
    returning * into v_state;
  end if;

  -- (a) and (b) in one statement, with the events they hold: one round trip inside the
  -- function instead of three, on the path every wake-up takes.
  with fresh as (
    select e.id, e.count, sum(e.count) over (order by e.id) - e.count as before
    from outbox._events e
    where e.id > v_state.last_id
    order by e.id
    limit greatest(p_max_events, 1)
  ),
  -- (b) as two lookups on _events_xid_idx, each with one condition the index serves, and
  -- `id <= last_id` applied after them (materialized: not pushed down). Written as one
  -- `id <= last_id and (xid = any(...) or xid >= ...)`, the generic plan walked the primary
  -- key over every event up to last_id and filtered by xid: each round read the whole
  -- retained table (measured: 9,166 rows read for a round of 49 events). These lookups read
  -- the events of transactions that were in flight, and those that started since the
  -- previous read, nothing else.
  late as materialized (
    select e.id, e.count from outbox._events e
    where v_state.snapshot_xmax is not null and e.xid = any(v_state.snapshot_xip)
    union all
    select e.id, e.count from outbox._events e
    where v_state.snapshot_xmax is not null and e.xid >= v_state.snapshot_xmax
  ),
  picked as (
    select f.id, f.count, true as is_fresh from fresh f where f.before < greatest(p_max_events, 1)
    union all
    select l.id, l.count, false from late l where l.id <= v_state.last_id
  )
  select array_agg(p.id order by p.id), max(p.id) filter (where p.is_fresh), coalesce(sum(p.count), 0)::int
  into v_ids, v_new_last, v_events
  from picked p;

  if coalesce(cardinality(v_ids), 0) = 0 then
    -- Nothing read: keeping the older snapshot is safe, since every transaction in flight
    -- now was either in flight then or has an xid at or above its xmax; and it spares the
    -- state row an update per idle poll.
    return query select 0, 0, v_state.last_id, null::bigint, null::text, null::uuid, null::bigint, null::text, null::boolean;
    return;
  end if;

  with matches as (
    select m.*, m.subscription = any(p_claim)
                and row_number() over (partition by m.subscription order by m.event_position) <= p_claim_limit as claim
    from outbox._event_matches(v_ids) m
  ),
  settled as (
    select m.*, m.claim and m.subscription = any(p_settle) as settle from matches m
  ),
  inserted as (
    insert into outbox.deliveries
      (event_id, event_position, subscription, order_key, status, attempts, locked_until, locked_by, delivered_at)
    select m.event_id, m.event_position, m.subscription, m.order_key,
           case when m.settle then 'delivered' when m.claim then 'delivering' else 'pending' end,
           case when m.claim then 1 else 0 end,
           case when m.claim and not m.settle then now() + make_interval(secs => p_lease_ms / 1000.0) end,
           case when m.claim and not m.settle then p_worker end,
           case when m.settle then now() end
    from settled m
    order by m.event_position
    on conflict (event_position, subscription) do nothing
    returning outbox.deliveries.id, outbox.deliveries.status, outbox.deliveries.event_position,
              outbox.deliveries.subscription, outbox.deliveries.event_id
  )
  -- Claimed: delivering or delivered, the statuses only claims are written with.
  select count(*)::int,
         array_agg(i.id) filter (where i.status <> 'pending'),
         array_agg(i.event_position) filter (where i.status <> 'pending'),
         array_agg(i.subscription) filter (where i.status <> 'pending'),
         array_agg(i.event_id) filter (where i.status <> 'pending'),
         array_agg(i.status = 'delivered') filter (where i.status <> 'pending')
  into v_deliveries, v_claimed, v_claimed_positions, v_claimed_subscriptions, v_claimed_event_ids, v_claimed_settle
  from inserted i;

  -- Deliveries left for other workers: wake them to claim ('deliver', as redeliver and replay
  -- say; a write's wake-up only asks the dispatcher to read). Whether or not any looks idle:
  -- this round's snapshot can predate a worker's idle mark, and that worker, having claimed
  -- before these rows committed, would wait for its poll. One notification per round that
  -- leaves work, in the dispatcher's transaction, never on the write path.
  if v_deliveries > coalesce(cardinality(v_claimed), 0) then
    perform pg_notify('outbox_wake', 'deliver');
  end if;

  update outbox._dispatch_state s set
    last_id = greatest(s.last_id, coalesce(v_new_last, s.last_id)),
    snapshot_xmax = pg_snapshot_xmax(v_snapshot),
    snapshot_xip = array(select pg_snapshot_xip(v_snapshot)),
    dispatched_at = now(),
    updated_at = now()
  where s.id = 1
  returning s.last_id into v_new_last;

  if coalesce(cardinality(v_claimed), 0) = 0 then
    return query select v_events, v_deliveries, v_new_last, null::bigint, null::text, null::uuid, null::bigint, null::text, null::boolean;
    return;
  end if;

  -- The claimed rows come from what the insert returned, not from reading deliveries again.
  -- An event claimed for several subscriptions carries its envelope on its first row only:
  -- the worker reuses it for the others rather than receiving it once per subscription.
  return query
  select v_events, v_deliveries, v_new_last, c.id, c.subscription, c.event_id, c.event_position,
         case when row_number() over (partition by c.event_position order by c.subscription) = 1
              then env.payload end,
         c.settle
  from unnest(v_claimed, v_claimed_subscriptions, v_claimed_event_ids, v_claimed_positions, v_claimed_settle)
         c(id, subscription, event_id, event_position, settle)
  join outbox._event_envelopes(v_claimed_positions) env
    on env.event_position = c.event_position
  order by c.event_position, c.subscription;
end
$$;
