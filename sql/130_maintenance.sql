-- Retention and status: bounded tables (DESIGN.md guarantee 6) and what `outbox status` shows.

-- Deletes, in one small batch, what retention allows: delivered deliveries older than
-- p_delivered_before, dead ones older than p_dead_before, and `_events` rows older than
-- p_delivered_before that dispatch has read and that no delivery still needs. Returns the
-- number of rows removed; the maintenance task calls it until it returns less than p_limit.
create or replace function outbox._prune(
  p_delivered_before timestamptz, p_dead_before timestamptz, p_limit int default 5000)
returns int
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_deliveries int;
  v_events int;
  v_last_id bigint;
begin
  with old as (
    select d.id from outbox.deliveries d
    where (d.status = 'delivered' and d.delivered_at < p_delivered_before)
       or (d.status = 'dead' and d.updated_at < p_dead_before)
    order by d.id
    limit p_limit
  )
  delete from outbox.deliveries d using old where d.id = old.id;
  get diagnostics v_deliveries = row_count;

  select s.last_id into v_last_id from outbox._dispatch_state s where s.id = 1;
  with old as (
    select e.id from outbox._events e
    where e.created_at < p_delivered_before
      and e.id <= coalesce(v_last_id, 0)
      and not exists (
        select from outbox.deliveries d
        where d.event_position >= e.id << 16 and d.event_position < (e.id + 1) << 16)
    order by e.id
    limit p_limit
  )
  delete from outbox._events e using old where e.id = old.id;
  get diagnostics v_events = row_count;
  return v_deliveries + v_events;
end
$$;

-- Per subscription: what is in line, what failed, what went out in the last hour, and since
-- when its endpoint has failed without a success (webhooks; null while it is healthy).
create or replace view outbox.subscription_status as
select
  s.name as subscription,
  s.kind,
  s.pattern,
  s.active,
  s.disabled_reason,
  coalesce(c.pending, 0) as pending,
  coalesce(c.retrying, 0) as retrying,
  coalesce(c.delivering, 0) as delivering,
  coalesce(c.dead, 0) as dead,
  coalesce(c.delivered_last_hour, 0) as delivered_last_hour,
  c.oldest_pending_at,
  extract(epoch from now() - c.oldest_pending_at) as oldest_pending_age_seconds,
  h.failing_since,
  h.last_success_at
from outbox.subscriptions s
left join outbox._subscription_health h on h.subscription = s.name
left join lateral (
  select
    count(*) filter (where d.status = 'pending') as pending,
    count(*) filter (where d.status = 'retrying') as retrying,
    count(*) filter (where d.status = 'delivering') as delivering,
    count(*) filter (where d.status = 'dead') as dead,
    count(*) filter (where d.status = 'delivered' and d.delivered_at > now() - interval '1 hour') as delivered_last_hour,
    min(d.created_at) filter (where d.status in ('pending', 'retrying', 'delivering')) as oldest_pending_at
  from outbox.deliveries d
  where d.subscription = s.name
) c on true;

-- Dispatch lag: how far dispatch is behind the newest committed event, in events and time.
create or replace view outbox.dispatch_status as
select
  st.last_id,
  st.dispatched_at,
  (select coalesce(sum(e.count), 0) from outbox._events e where e.id > coalesce(st.last_id, 0)) as undispatched_events,
  (select extract(epoch from now() - min(e.created_at)) from outbox._events e where e.id > coalesce(st.last_id, 0)) as lag_seconds,
  cardinality(st.snapshot_xip) as transactions_in_flight
from (select 1) one
left join outbox._dispatch_state st on st.id = 1;
