-- The capture triggers: the only pg-outbox code on the application's write path.
--
-- One function serves every captured table. Its SQL is static (plpgsql caches its plans per
-- table), and the per-table options arrive as trigger arguments written by enable_capture:
--   TG_ARGV[0] key columns (text[] literal), TG_ARGV[1] excluded columns (text[] or ''),
--   TG_ARGV[2] watched columns for updates (text[] or ''), TG_ARGV[3] tenant column (or '').
-- Nothing in the body names a column of the captured table, so adding, renaming or dropping
-- columns never breaks the application's writes; the DDL event trigger refreshes the
-- arguments when names change.
--
-- It stores raw facts only (operation, table, the row images as one JSON array, context); the
-- envelope is assembled on read by outbox.events. Statement level with transition tables: a
-- 10,000-row statement is one call and one INSERT writing ten rows of 1,000 images each.
-- `to_json` (text) is markedly cheaper than building jsonb on this path.
--
-- Rows of the transition tables are always referenced as `n.*` / `o.*`: a bare `n` or `o`
-- means the table's own column when it has one of that name, and the event would carry
-- that column's value instead of the row (or the UPDATE would fail).
create or replace function outbox.tg_capture__write()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
-- A captured table may have a column named like one of these variables.
#variable_conflict use_variable
declare
  v_keys text[] := TG_ARGV[0]::text[];
  v_exclude text[] := nullif(TG_ARGV[1], '')::text[];
  v_columns text[] := nullif(TG_ARGV[2], '')::text[];
  v_tenant_column text := nullif(TG_ARGV[3], '');
  -- Most writes set no context: five current_setting calls are cheaper than building jsonb.
  v_context jsonb := case when concat(current_setting('outbox.tenant', true), current_setting('outbox.actor', true),
                                      current_setting('outbox.correlation_id', true), current_setting('outbox.causation_id', true),
                                      current_setting('outbox.traceparent', true)) <> ''
                          then outbox._context() end;
  v_wake boolean;
  v_schema name;
  v_table name;
begin
  if TG_LEVEL = 'ROW' then
    -- Partitioned tables: their statement triggers do not fire for statements that name a
    -- partition and are not cloned to new partitions, while row triggers are cloned to every
    -- partition, present and future. Row level is the only way to see every write there.
    if TG_OP = 'UPDATE' then
      if v_columns is null and v_exclude is null then
        if new *= old then return null; end if;
      elsif not outbox._capture_changed(
        to_jsonb(old), to_jsonb(new), v_exclude, v_columns) then
        return null;
      end if;
    end if;
    -- The trigger fires on the partition holding the row, but the event names the captured
    -- partitioned table (its topic, its subscriptions), wherever the row lives.
    select n.nspname, c.relname into v_schema, v_table
    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
    where c.oid = coalesce(pg_partition_root(TG_RELID), TG_RELID);
    insert into outbox._events
      (op, schema_name, table_name, key_columns, tenant_column, context, count, rows)
    values (
      lower(TG_OP), v_schema, v_table, v_keys, v_tenant_column, v_context, 1,
      case TG_OP
        when 'INSERT' then json_build_array(outbox._capture_image(to_json(new), v_exclude))
        when 'DELETE' then json_build_array(outbox._capture_image(to_json(old), v_exclude))
        else json_build_array(json_build_array(
          outbox._capture_image(to_json(old), v_exclude),
          outbox._capture_image(to_json(new), v_exclude)))
      end);
    -- Inline, not outbox._wake(): a SQL function called from plpgsql is planned on every
    -- call, which cost about a third of single-row insert throughput.
    if exists (select from outbox._workers w where w.idle_until > now()) then
      perform pg_notify('outbox_wake', '');
    end if;
    return null;
  end if;

  -- INSERT and DELETE: statements of up to 1,000 rows (nearly all of them) take the fast
  -- path, one aggregate without chunking; `limit 1001` bounds the scan so that a larger
  -- statement falls through to the chunked path. The idle-worker check rides on the INSERT
  -- (RETURNING), which is cheaper than a statement of its own. Events of one statement
  -- share its commit, so their order within it carries no meaning; the chunked paths do
  -- not pay for sorting it.
  if TG_OP = 'INSERT' then
    insert into outbox._events
      (op, schema_name, table_name, key_columns, tenant_column, context, count, rows)
    select 'insert', TG_TABLE_SCHEMA, TG_TABLE_NAME, v_keys, v_tenant_column, v_context,
           count(*), json_agg(outbox._capture_image(to_json(n.*), v_exclude))
    from (select * from outbox_new limit 1001) n
    having count(*) between 1 and 1000
    returning exists (select from outbox._workers w where w.idle_until > now()) into v_wake;
    if not found then
      insert into outbox._events
        (op, schema_name, table_name, key_columns, tenant_column, context, count, rows)
      select 'insert', TG_TABLE_SCHEMA, TG_TABLE_NAME, v_keys, v_tenant_column, v_context,
             count(*), json_agg(r.image)
      from (
        select outbox._capture_image(to_json(n.*), v_exclude) as image, row_number() over () as pos
        from outbox_new n
      ) r
      group by (r.pos - 1) / 1000;
      v_wake := found and exists (select from outbox._workers w where w.idle_until > now());
    end if;

  elsif TG_OP = 'DELETE' then
    insert into outbox._events
      (op, schema_name, table_name, key_columns, tenant_column, context, count, rows)
    select 'delete', TG_TABLE_SCHEMA, TG_TABLE_NAME, v_keys, v_tenant_column, v_context,
           count(*), json_agg(outbox._capture_image(to_json(o.*), v_exclude))
    from (select * from outbox_old limit 1001) o
    having count(*) between 1 and 1000
    returning exists (select from outbox._workers w where w.idle_until > now()) into v_wake;
    if not found then
      insert into outbox._events
        (op, schema_name, table_name, key_columns, tenant_column, context, count, rows)
      select 'delete', TG_TABLE_SCHEMA, TG_TABLE_NAME, v_keys, v_tenant_column, v_context,
             count(*), json_agg(r.image)
      from (
        select outbox._capture_image(to_json(o.*), v_exclude) as image, row_number() over () as pos
        from outbox_old o
      ) r
      group by (r.pos - 1) / 1000;
      v_wake := found and exists (select from outbox._workers w where w.idle_until > now());
    end if;

  elsif TG_OP = 'UPDATE' then
    -- Old and new transition tables are filled in lockstep, one old and one new tuple per
    -- updated row, so their scan positions pair them. Pairing by position rather than by key
    -- keeps an UPDATE that changes primary keys correct: each event carries the old row (old
    -- key) and the new row (new key). test/capture.test.ts guards this behaviour.
    with inserted as (
    insert into outbox._events
      (op, schema_name, table_name, key_columns, tenant_column, context, count, rows)
    select 'update', TG_TABLE_SCHEMA, TG_TABLE_NAME, v_keys, v_tenant_column, v_context,
           count(*), json_agg(json_build_array(
             outbox._capture_image(to_json(p.o), v_exclude),
             outbox._capture_image(to_json(p.n), v_exclude)))
    from (
      select o.r as o, n.r as n, o.pos
      from (select (o.*)::record as r, row_number() over () as pos from outbox_old o) o
      join (select (n.*)::record as r, row_number() over () as pos from outbox_new n) n using (pos)
    ) p
    where case when v_columns is null and v_exclude is null then not (p.n *= p.o)
               else outbox._capture_changed(to_jsonb(p.o), to_jsonb(p.n), v_exclude, v_columns)
          end
    group by (p.pos - 1) / 1000
    returning 1
    )
    select exists (select from inserted) and exists (select from outbox._workers w where w.idle_until > now())
    into v_wake;
  end if;
  if v_wake then
    perform pg_notify('outbox_wake', '');
  end if;
  return null;
end
$$;

-- A row image without the excluded columns. Inlined by the planner.
create or replace function outbox._capture_image(p_row json, p_exclude text[])
returns json
language sql immutable parallel safe
as $$
  select case when p_exclude is null then p_row else (p_row::jsonb - p_exclude)::json end
$$;

-- Whether an UPDATE changed a captured column: one of `p_columns` when given, otherwise any
-- column not excluded. Compared as jsonb, so types without `=` (json, xml, point) work.
create or replace function outbox._capture_changed(
  p_old jsonb, p_new jsonb, p_exclude text[], p_columns text[])
returns boolean
language sql immutable parallel safe
as $$
  select case
    when p_columns is null then
      (p_old - coalesce(p_exclude, '{}'::text[])) is distinct from (p_new - coalesce(p_exclude, '{}'::text[]))
    else exists (
      select from unnest(p_columns) c where p_old -> c is distinct from p_new -> c)
  end
$$;

-- TRUNCATE of a captured table: one `truncate` event when 'truncate' is captured. When
-- deletes are captured but truncate is not, TRUNCATE would remove rows that delete
-- subscribers never hear about, so it is refused instead (the other trigger below).
create or replace function outbox.tg_capture__truncate()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  insert into outbox._events
    (op, schema_name, table_name, key_columns, tenant_column, context, count, rows)
  values ('truncate', TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0]::text[],
          nullif(TG_ARGV[3], ''), outbox._context(), 1, '[null]'::json);
  if exists (select from outbox._workers w where w.idle_until > now()) then
    perform pg_notify('outbox_wake', '');
  end if;
  return null;
end
$$;

create or replace function outbox.tg_capture__refuse_truncate()
returns trigger
language plpgsql
as $$
begin
  raise exception 'outbox: TRUNCATE of captured table %.% would delete rows without delete events',
      quote_ident(TG_TABLE_SCHEMA), quote_ident(TG_TABLE_NAME)
    using errcode = '55000',
          hint = format('Use DELETE, or capture truncates too: select outbox.enable_capture(%L, operations => ''{insert,update,delete,truncate}'')',
                        quote_ident(TG_TABLE_SCHEMA) || '.' || quote_ident(TG_TABLE_NAME));
end
$$;

-- Fires only under session_replication_role = replica (ENABLE REPLICA), when the capture
-- triggers do not: such writes are counted so that `outbox status` can show the bypass.
create or replace function outbox.tg_capture__bypass()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  update outbox._captures
     set bypassed_statements = bypassed_statements + 1, last_bypassed_at = now()
   where target = coalesce(pg_partition_root(TG_RELID), TG_RELID)::regclass;
  return null;
end
$$;
