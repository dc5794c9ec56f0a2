-- Endpoint health: a webhook endpoint that has failed without a single success for a long
-- time (the worker option webhooks.deactivateAfterFailingMs, default 3 days) is deactivated
-- instead of being retried forever. src/transports/endpointHealth.ts calls this when a
-- worker's view of an endpoint changes, and now and then while it stays the same.

-- Records a success (p_ok) or a failure of the subscription's endpoint. A success clears
-- failing_since; a failure sets it unless it is set already. Returns failing_since when it
-- lies more than p_deactivate_after_ms in the past (the caller deactivates the subscription),
-- else null; p_deactivate_after_ms 0 never returns a time.
create or replace function outbox._subscription_health_record(
  p_subscription text, p_ok boolean, p_deactivate_after_ms bigint)
returns timestamptz
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_failing_since timestamptz;
begin
  -- A subscription deleted meanwhile has no health to keep.
  if not exists (select from outbox.subscriptions s where s.name = p_subscription) then
    return null;
  end if;
  if p_ok then
    insert into outbox._subscription_health as h (subscription, last_success_at)
    values (p_subscription, now())
    on conflict (subscription) do update set last_success_at = now(), failing_since = null;
    return null;
  end if;
  insert into outbox._subscription_health as h (subscription, failing_since, last_failure_at)
  values (p_subscription, now(), now())
  on conflict (subscription) do update set failing_since = coalesce(h.failing_since, now()), last_failure_at = now()
  returning h.failing_since into v_failing_since;
  if p_deactivate_after_ms > 0 and v_failing_since <= now() - make_interval(secs => p_deactivate_after_ms / 1000.0) then
    return v_failing_since;
  end if;
  return null;
end
$$;
