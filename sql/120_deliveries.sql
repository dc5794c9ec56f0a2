-- Deliveries: claim with a lease, record outcomes, recover expired leases, redeliver, replay.

-- Claims up to p_limit due deliveries of one subscription for a worker, with a lease of
-- p_lease_ms. Due: pending or retrying with next_attempt_at reached. In an ordered
-- subscription only the oldest unfinished delivery of each key is due, so a failing event
-- blocks its key (and only its key) until it is delivered or dead. With a `concurrency` in
-- the subscription's config, deliveries in flight across all workers stay within it: the
-- count and the claim are serialized per subscription by a transaction advisory lock.
create or replace function outbox._delivery_claim(
  p_worker text, p_subscription text, p_limit int, p_lease_ms int)
returns table (id bigint, attempts int, event_id uuid, event_position bigint, payload text)
language plpgsql
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan -- planned once per session, as _dispatch
set enable_seqscan = off -- as _dispatch: a plan made on an empty table must not scan it later
set jit = off
as $$
declare
  v_sub outbox.subscriptions;
  v_limit int := p_limit;
  v_concurrency int;
begin
  select * into v_sub from outbox.subscriptions s where s.name = p_subscription and s.active;
  if not found then return; end if;
  v_concurrency := (v_sub.config ->> 'concurrency')::numeric::int; -- the check allows 1.0
  if v_concurrency is not null then
    perform pg_advisory_xact_lock(hashtextextended(p_subscription, 7320110002));
    v_limit := least(v_limit, v_concurrency - (
      select count(*)::int from outbox.deliveries d
      where d.status = 'delivering' and d.subscription = p_subscription and d.locked_until > now()));
    if v_limit <= 0 then return; end if;
  end if;

  return query
  with due as (
    select d.id
    from outbox.deliveries d
    where d.subscription = p_subscription
      and d.status in ('pending', 'retrying')
      and d.next_attempt_at <= now()
      and (d.order_key is null or not exists (
        select from outbox.deliveries b
        where b.subscription = d.subscription and b.order_key = d.order_key
          and b.event_position < d.event_position
          and b.status in ('pending', 'retrying', 'delivering')))
    order by d.next_attempt_at, d.event_position
    limit v_limit
    for update skip locked
  ),
  claimed as (
    update outbox.deliveries d set
      status = 'delivering',
      attempts = d.attempts + 1,
      locked_until = now() + make_interval(secs => p_lease_ms / 1000.0),
      locked_by = p_worker,
      updated_at = now()
    -- `id = any(array)`, an index condition whatever size the planner believes the table
    -- has. Joined to `due` instead, the session's generic plan made while deliveries held a
    -- row or two walked the whole primary key for every claim (measured: 3,001 rows read to
    -- claim 5).
    where d.id = any(array(select due.id from due))
    returning d.id, d.attempts, d.event_id, d.event_position
  )
  select c.id, c.attempts, c.event_id, c.event_position, env.payload
  from claimed c
  join outbox._event_envelopes(array(select c2.event_position from claimed c2)) env
    on env.event_position = c.event_position
  order by c.event_position;
end
$$;

-- The wait before retry n (n = attempts made so far): full jitter, a random time in
-- [0, min(1 h, 1 s × 2^n)].
create or replace function outbox._retry_delay(p_attempts int)
returns interval
language sql volatile
as $$
  select make_interval(secs => random() * least(3600, power(2, least(p_attempts, 31))))
$$;

-- Records the outcomes of attempts for a whole batch. p_outcomes: 'delivered', 'retry'
-- (p_retry_after_ms overrides the backoff, e.g. from Retry-After), or 'dead'
-- (non-retryable). A retry past max_attempts is dead. Only deliveries still leased to
-- p_worker change: a late answer after the lease passed to another worker is dropped.
-- The rows are found by `locked_by` alone (deliveries_locked_by_check: set exactly while
-- delivering), not by `status = 'delivering'`, whose partial index the planner would read.
--
-- One UPDATE per distinct outcome (usually one: every attempt delivered), each finding its
-- rows by `id = any(...)` on the primary key. That is the one plan these statements can
-- have, so it is planned once per session and costs the same at any table size. A join of
-- the deliveries with the unnested outcomes had three worse choices: planned on every call
-- (1.4 ms, more than the update itself for the few outcomes of a round); a generic plan
-- made while the table was empty, that scanned every delivering row and rescanned the
-- outcomes for each (4.6 ms for 44 outcomes, measured with a worker delivering); or one
-- with stale statistics joining every delivering row against every outcome (5,000 outcomes
-- took 12 s instead of 0.1 s).
create or replace function outbox._delivery_complete(
  p_worker text, p_ids bigint[], p_outcomes text[], p_errors text[], p_statuses int[], p_retry_after_ms int[])
returns int
language plpgsql
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
set jit = off
as $$
declare
  v_group record;
  v_count int;
  v_done int := 0;
begin
  for v_group in
    select o.outcome, left(o.error, 500) as error, o.status, o.retry_after_ms, array_agg(o.id) as ids
    from unnest(p_ids, p_outcomes, p_errors, p_statuses, p_retry_after_ms)
      as o(id, outcome, error, status, retry_after_ms)
    group by 1, 2, 3, 4
  loop
    update outbox.deliveries d set
      status = case
        when v_group.outcome = 'delivered' then 'delivered'
        when v_group.outcome = 'dead' or d.attempts >= s.max_attempts then 'dead'
        else 'retrying' end,
      next_attempt_at = case
        when v_group.outcome = 'retry' and d.attempts < s.max_attempts then
          now() + coalesce(make_interval(secs => v_group.retry_after_ms / 1000.0), outbox._retry_delay(d.attempts))
        else d.next_attempt_at end,
      delivered_at = case when v_group.outcome = 'delivered' then now() else d.delivered_at end,
      last_error = case when v_group.outcome = 'delivered' then null else v_group.error end,
      last_status = v_group.status,
      locked_until = null,
      locked_by = null,
      updated_at = now()
    from outbox.subscriptions s
    where d.id = any(v_group.ids) and d.locked_by = p_worker and s.name = d.subscription;
    get diagnostics v_count = row_count;
    v_done := v_done + v_count;
  end loop;
  return v_done;
end
$$;

-- Deliveries that dispatch wrote as delivered for p_worker to settle in its round (see
-- `_dispatch`'s p_settle) and that did not succeed in time (failed, or still running): they
-- become delivering with a lease, like any claimed delivery, and their outcome is recorded
-- by `_delivery_complete` once known. Called in the dispatch transaction, before its commit.
create or replace function outbox._delivery_hold(p_worker text, p_ids bigint[], p_lease_ms int)
returns int
language sql
as $$
  with held as (
    update outbox.deliveries set
      status = 'delivering', delivered_at = null, locked_by = p_worker,
      locked_until = now() + make_interval(secs => p_lease_ms / 1000.0), updated_at = now()
    where id = any(p_ids) and status = 'delivered' and attempts = 1
    returning 1
  )
  select count(*)::int from held
$$;

-- Deliveries whose lease ran out (the worker crashed or lost its connection mid-delivery)
-- go back in line as retrying, or dead when they used their last attempt.
create or replace function outbox._delivery_recover()
returns int
language sql
as $$
  with expired as (
    update outbox.deliveries d set
      status = case when d.attempts >= s.max_attempts then 'dead' else 'retrying' end,
      next_attempt_at = now(),
      last_error = 'lease expired: the worker stopped or lost its connection during the attempt',
      locked_until = null,
      locked_by = null,
      updated_at = now()
    from outbox.subscriptions s
    where d.status = 'delivering' and d.locked_until < now() and s.name = d.subscription
    returning 1
  )
  select count(*)::int from expired
$$;

-- Puts a dead or delivered delivery back in line: the same row returns to pending with
-- attempts 0.
create or replace function outbox.redeliver(delivery_id bigint)
returns void
language plpgsql
as $$
begin
  update outbox.deliveries set
    status = 'pending', attempts = 0, next_attempt_at = now(), last_error = null,
    last_status = null, delivered_at = null, locked_until = null, locked_by = null, updated_at = now()
  where id = delivery_id and status in ('dead', 'delivered');
  if not found then
    if exists (select from outbox.deliveries where id = delivery_id) then
      raise exception 'outbox.redeliver: delivery % is still in line (pending, retrying or delivering)', delivery_id
        using errcode = '55000';
    end if;
    raise exception 'outbox.redeliver: no delivery %', delivery_id using errcode = 'P0002';
  end if;
  perform pg_notify('outbox_wake', 'deliver');
end
$$;

-- Replays a subscription since a time: its dead and delivered deliveries of events since
-- then return to pending (attempts 0), and events since then that match it but have no
-- delivery (dispatched while it was inactive, or before it existed) get one. Returns the
-- number of deliveries put in line.
create or replace function outbox.replay(subscription text, since timestamptz)
returns int
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
-- The public parameter name `subscription` is also a column of deliveries: columns win.
#variable_conflict use_column
declare
  v_reset int;
  v_created int;
  v_last_id bigint;
begin
  -- Locked: a delete or rename waits for this transaction, then takes the deliveries created
  -- here along (see tg_subscriptions__cascade).
  perform from outbox.subscriptions s where s.name = replay.subscription for key share;
  if not found then
    raise exception 'outbox.replay: no subscription %', quote_literal(replay.subscription) using errcode = 'P0002';
  end if;
  update outbox.deliveries d set
    status = 'pending', attempts = 0, next_attempt_at = now(), last_error = null,
    last_status = null, delivered_at = null, locked_until = null, locked_by = null, updated_at = now()
  where d.subscription = replay.subscription and d.status in ('dead', 'delivered')
    and exists (select from outbox._events e where e.id = d.event_position >> 16 and e.created_at >= since);
  get diagnostics v_reset = row_count;

  -- Only events dispatch has read: later ones reach the subscription the normal way.
  select s.last_id into v_last_id from outbox._dispatch_state s where s.id = 1;
  insert into outbox.deliveries (event_id, event_position, subscription, order_key)
  select m.event_id, m.event_position, m.subscription, m.order_key
  from outbox._event_matches(array(
         select e.id from outbox._events e
         where e.created_at >= since and e.id <= coalesce(v_last_id, 0)), replay.subscription) m
  order by m.event_position
  on conflict (event_position, subscription) do nothing;
  get diagnostics v_created = row_count;

  perform pg_notify('outbox_wake', 'deliver');
  return v_reset + v_created;
end
$$;

-- A stopping worker hands back what it claimed but did not finish (claims that arrived while
-- it was draining): they are due again at once instead of after the lease.
create or replace function outbox._delivery_release(p_worker text)
returns int
language sql
as $$
  with released as (
    update outbox.deliveries set
      status = 'retrying', next_attempt_at = now(), locked_until = null, locked_by = null,
      last_error = 'the worker stopped before the attempt finished', updated_at = now()
    where status = 'delivering' and locked_by = p_worker
    returning 1
  )
  select count(*)::int from released
$$;
