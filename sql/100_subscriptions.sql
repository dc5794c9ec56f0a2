-- Subscriptions: validation of hand-written rows, pattern matching, and change notification.

-- A subscription pattern as an anchored regex over '.' || topic. Segments: `*` is one
-- segment, `**` any number (zero included), anything else is literal; the pattern `*` alone
-- matches every event. Matching '.' || topic lets each segment carry its own leading dot, so
-- `**` can match nothing at all.
-- PL/pgSQL, not SQL: dispatch calls it once per subscription and round, from a statement
-- executed anew each round, and a SQL function that cannot be inlined (this one aggregates)
-- is planned again on every such execution: 0.3 ms of a one-event round's 0.9 ms, measured.
-- PL/pgSQL keeps its plans for the session.
create or replace function outbox._pattern_regex(p_pattern text)
returns text
language plpgsql immutable strict parallel safe
as $$
declare
  v_regex text := '^';
  v_segment text;
begin
  if p_pattern = '*' then
    return '^.*$';
  end if;
  foreach v_segment in array string_to_array(p_pattern, '.') loop
    v_regex := v_regex || case v_segment
      when '*' then '\.[^.]+'
      when '**' then '(\.[^.]+)*'
      else '\.' || regexp_replace(v_segment, '([.\\+*?\[^\]$(){}=!<>|:#-])', '\\\1', 'g')
    end;
  end loop;
  return v_regex || '$';
end
$$;

-- Whether a topic matches a pattern (the same rule dispatch applies, for ad-hoc SQL).
create or replace function outbox.topic_matches(topic text, pattern text)
returns boolean
language sql immutable strict parallel safe
as $$
  select ('.' || topic) ~ outbox._pattern_regex(pattern)
$$;

-- `allow_private` was accepted in webhook configs up to 0.1 and never had an effect; the
-- worker option `webhooks.allowPrivateNetworks` decides instead (a per-subscription override
-- would let whoever writes subscriptions lift it). Dropped from existing rows before the
-- check below starts refusing it.
update outbox.subscriptions set config = config - 'allow_private'
where kind = 'webhook' and config ? 'allow_private';

-- What is wrong with a subscription's config for its kind, or null. The TypeScript side
-- validates the same shapes with zod (src/transports/notify.ts, src/transports/webhookConfig.ts);
-- this guards rows written by hand. Keep the two in step: test/webhook.config.test.ts runs
-- one table of configs through both.
create or replace function outbox._subscription_config_problem(p_kind text, p_config jsonb)
returns text
language plpgsql immutable
as $$
declare
  v_key text;
  v_value jsonb;
  v_allowed text[];
  v_url text;
  v_reserved constant text[] := '{host,content-length,content-type,content-encoding,transfer-encoding,connection,keep-alive,upgrade,te,trailer,expect,proxy-authorization,proxy-connection}';
  v_secret constant text := 'whsec_[A-Za-z0-9+/]{16,}={0,2}';
begin
  if jsonb_typeof(p_config) <> 'object' then
    return 'config must be a JSON object';
  end if;
  v_allowed := case p_kind
    when 'webhook' then '{url,secret,headers,timeout_ms,batch_size,concurrency}'
    when 'notify' then '{channel,concurrency}'
    when 'handler' then '{concurrency}'
  end;
  select k into v_key from jsonb_object_keys(p_config) k where k <> all(v_allowed) limit 1;
  if found then
    return format('config has unknown key %L for kind %s (allowed: %s)', v_key, p_kind, array_to_string(v_allowed, ', '));
  end if;
  if p_config ? 'concurrency' and not (jsonb_typeof(p_config -> 'concurrency') = 'number'
      and (p_config ->> 'concurrency')::numeric between 1 and 10000
      and (p_config ->> 'concurrency')::numeric = trunc((p_config ->> 'concurrency')::numeric)) then
    return 'config.concurrency must be a whole number from 1 to 10000';
  end if;
  if p_kind = 'webhook' then
    v_url := case when jsonb_typeof(p_config -> 'url') = 'string' then p_config ->> 'url' end;
    if v_url ~ '^https?://[^/?#\s]*@' then
      return 'config.url must not carry user:password@; send credentials in config.headers (e.g. Authorization)';
    end if;
    -- A host without characters URLs forbid there, or a bracketed IPv6 literal; a port up to 65535.
    if v_url is null
       or v_url !~ '^https?://([^]\s/?#@:<>\\^|%[]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?([/?#]\S*)?$'
       or coalesce(substring(v_url from '^https?://(?:\[[^]]*\]|[^/?#:]*):([0-9]{1,5})')::int, 0) > 65535 then
      return 'config.url must be an http:// or https:// URL';
    end if;
    if p_config ? 'secret' and (jsonb_typeof(p_config -> 'secret') <> 'string'
       or (p_config ->> 'secret') !~ ('^' || v_secret || '( ' || v_secret || ')*$')) then
      return 'config.secret must be a string whsec_<base64> (at least 16 base64 characters), or several separated by single spaces';
    end if;
    if p_config ? 'headers' then
      if jsonb_typeof(p_config -> 'headers') <> 'object' then
        return 'config.headers must be an object of string values';
      end if;
      if (select count(*) from jsonb_object_keys(p_config -> 'headers')) > 50 then
        return 'config.headers must have at most 50 headers';
      end if;
      for v_key, v_value in select h.key, h.value from jsonb_each(p_config -> 'headers') h loop
        if v_key !~ '^[!#$%&''*+.^_`|~0-9A-Za-z-]+$' then
          return format('config.headers: header name %s is not a valid HTTP header name', to_json(v_key));
        end if;
        if lower(v_key) = any(v_reserved) or lower(v_key) like 'webhook-%' then
          return format('config.headers: header %s is set by pg-outbox and cannot be overridden (reserved: %s, webhook-*)',
            v_key, array_to_string(v_reserved, ', '));
        end if;
        if jsonb_typeof(v_value) <> 'string' then
          return format('config.headers: header %s must be a string', v_key);
        end if;
        if length(v_value #>> '{}') > 8192 or (v_value #>> '{}') ~ '[\x01-\x08\x0a-\x1f\x7f]' then
          return format('config.headers: header %s must be at most 8192 characters without line breaks or control characters', v_key);
        end if;
      end loop;
      select max(k) into v_key from jsonb_object_keys(p_config -> 'headers') k
      group by lower(k) having count(*) > 1 limit 1;
      if found then
        return format('config.headers: header %s appears twice (header names are case-insensitive)', v_key);
      end if;
    end if;
    if p_config ? 'timeout_ms' and not (jsonb_typeof(p_config -> 'timeout_ms') = 'number'
       and (p_config ->> 'timeout_ms')::numeric between 100 and 300000
       and (p_config ->> 'timeout_ms')::numeric = trunc((p_config ->> 'timeout_ms')::numeric)) then
      return 'config.timeout_ms must be a whole number from 100 to 300000';
    end if;
    if p_config ? 'batch_size' and not (jsonb_typeof(p_config -> 'batch_size') = 'number'
       and (p_config ->> 'batch_size')::numeric between 1 and 1000
       and (p_config ->> 'batch_size')::numeric = trunc((p_config ->> 'batch_size')::numeric)) then
      return 'config.batch_size must be a whole number from 1 to 1000';
    end if;
  elsif p_kind = 'notify' then
    if jsonb_typeof(p_config -> 'channel') is distinct from 'string'
       or length(p_config ->> 'channel') not between 1 and 63 then
      return 'config.channel must be a channel name of 1 to 63 characters';
    end if;
  end if;
  return null;
end
$$;

create or replace function outbox.tg_subscriptions__validate()
returns trigger
language plpgsql
as $$
declare
  v_problem text;
begin
  if new.pattern is null or new.pattern !~ '^(\*\*|\*|[^.*\s]+)(\.(\*\*|\*|[^.*\s]+))*$' then
    raise exception 'outbox.subscriptions: pattern % of subscription % is invalid', quote_literal(new.pattern), quote_literal(new.name)
      using errcode = '23514',
            hint = 'Patterns are dot-separated segments: a literal, * (one segment) or ** (any number), e.g. public.users.*, *.*.delete, order.**, or * for every event.';
  end if;
  v_problem := outbox._subscription_config_problem(new.kind, new.config);
  if v_problem is not null then
    raise exception 'outbox.subscriptions: % (subscription %, kind %)', v_problem, quote_literal(new.name), new.kind
      using errcode = '23514';
  end if;
  if new.filter is not null then
    begin
      perform jsonb_path_match('{}'::jsonb, new.filter);
    exception when others then
      raise exception 'outbox.subscriptions: filter % of subscription % is not a predicate', quote_literal(new.filter::text), quote_literal(new.name)
        using errcode = '23514',
              hint = 'Write a condition over the envelope, e.g. $.new.status == "paid" or $.changed[*] == "email"; a path such as $ ? (...) selects values instead.';
    end;
  end if;
  if tg_op = 'UPDATE' then
    new.updated_at := now();
    -- Re-activating by hand (`set active = true`) clears the reason it was switched off.
    if new.active and not old.active and new.disabled_reason is not distinct from old.disabled_reason then
      new.disabled_reason := null;
    end if;
    -- Re-activated or re-configured: the endpoint gets a fresh start on the failing clock.
    if (new.active and not old.active) or new.config is distinct from old.config then
      delete from outbox._subscription_health h where h.subscription = old.name;
    end if;
  end if;
  return new;
end
$$;

drop trigger if exists tg_subscriptions__validate on outbox.subscriptions;
create trigger tg_subscriptions__validate
  before insert or update on outbox.subscriptions
  for each row execute function outbox.tg_subscriptions__validate();

-- Workers cache subscriptions and drop the cache on this notification.
create or replace function outbox.tg_subscriptions__notify()
returns trigger
language plpgsql
as $$
begin
  perform pg_notify('outbox_subscriptions', '');
  return null;
end
$$;

drop trigger if exists tg_subscriptions__notify on outbox.subscriptions;
create trigger tg_subscriptions__notify
  after insert or update or delete or truncate on outbox.subscriptions
  for each statement execute function outbox.tg_subscriptions__notify();

-- Deleting a subscription deletes its deliveries, and renaming it renames them (DESIGN.md),
-- as a foreign key with ON DELETE / ON UPDATE CASCADE would. Not a foreign key: its check
-- ran once for every delivery dispatch writes (a query each, by SPI), about 4 µs of the
-- 30 µs of database time a delivered event costs (measured on dispatch rounds of 200 events).
--
-- The key also kept a dispatch round from writing deliveries for a subscription deleted or
-- renamed while the round ran (its snapshot still showed the old row): the check failed the
-- round. `_dispatch_state` does that here. These triggers update its row first, so
--   - a round that has not locked the row yet waits for this transaction, then fails with
--     40001 (its repeatable read snapshot is older than the row) and reads again later;
--   - a round holding the row makes this wait until it commits; the statements below then
--     run with a newer snapshot (read committed) and take its deliveries along.
-- Either way no delivery is left naming a subscription that does not exist. Dispatch
-- waits for a transaction that deletes or renames subscriptions: keep those short.
--
-- Deletes run once per statement, over its transition table: deliveries have no index on
-- `subscription` alone, so each per-row delete read the whole table (400,000 deliveries: one
-- subscription 70 ms, ten in one statement 482 ms, against 132 ms for one set-based delete).
-- Renames stay per row: transition tables cannot serve `update of name` triggers, and old and
-- new names could not be paired.
create or replace function outbox.tg_subscriptions__cascade()
returns trigger
language plpgsql
as $$
begin
  -- A statement that deleted nothing must not hold up a dispatch round. (Nested: one
  -- expression naming outbox_old would be planned for renames too, which have no such table.)
  if tg_op = 'DELETE' then
    if not exists (select from outbox_old) then
      return null;
    end if;
  end if;
  update outbox._dispatch_state s set updated_at = now() where s.id = 1;
  if tg_op = 'TRUNCATE' then
    delete from outbox.deliveries;
  elsif tg_op = 'DELETE' then
    delete from outbox.deliveries d using outbox_old o where d.subscription = o.name;
  else
    update outbox.deliveries d set subscription = new.name where d.subscription = old.name;
  end if;
  return null;
end
$$;

drop trigger if exists tg_subscriptions__cascade_delete on outbox.subscriptions;
create trigger tg_subscriptions__cascade_delete
  after delete on outbox.subscriptions
  referencing old table as outbox_old
  for each statement execute function outbox.tg_subscriptions__cascade();

drop trigger if exists tg_subscriptions__cascade_rename on outbox.subscriptions;
create trigger tg_subscriptions__cascade_rename
  after update of name on outbox.subscriptions
  for each row when (old.name is distinct from new.name)
  execute function outbox.tg_subscriptions__cascade();

drop trigger if exists tg_subscriptions__cascade_truncate on outbox.subscriptions;
create trigger tg_subscriptions__cascade_truncate
  after truncate on outbox.subscriptions
  for each statement execute function outbox.tg_subscriptions__cascade();
