-- pg-outbox: sql/ (000_storage.sql, 010_events.sql, 020_capture_trigger.sql, 030_capture.sql, 040_emit.sql, 050_events_view.sql, 060_ddl.sql, 090_privileges.sql)
-- sql/000_storage.sql
-- Storage and privileges of pg-outbox's tables (created by drizzle-kit migrations).

-- The row images of a statement are stored as one JSON array; lz4 compresses and
-- decompresses it several times faster than the default pglz. Builds without lz4 keep pglz.
do $$
begin
  alter table outbox._events alter column rows set compression lz4;
exception when feature_not_supported or invalid_parameter_value then
  raise notice 'outbox: lz4 is not available in this PostgreSQL build; keeping pglz';
end
$$;
--> statement-breakpoint
-- sql/010_events.sql
-- Event identity and context: small helpers shared by the capture triggers, emit and the
-- events view.

-- The position of an event is `_events.id << 16 | index in the row's array`: one stored row
-- holds a whole statement's changes (chunked), and positions stay one monotonic bigint.
--
-- The public uuid is derived from the position and the event's time, in the UUIDv7 layout
-- (48 bits of Unix milliseconds, then the position in the 74 "random" bits). It is therefore
-- stable across attempts and reads, time-ordered, costs nothing on the write path (no
-- gen_random_uuid, no uuid index) and can be turned back into the position.
create or replace function outbox._event_uuid(p_time timestamptz, p_position bigint)
returns uuid
language sql immutable strict parallel safe
as $$
  select (
    lpad(to_hex(floor(extract(epoch from p_time) * 1000)::bigint), 12, '0')
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
--> statement-breakpoint
-- sql/020_capture_trigger.sql
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
  v_context jsonb := outbox._context();
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
    return null;
  end if;

  if TG_OP = 'INSERT' then
    insert into outbox._events
      (op, schema_name, table_name, key_columns, tenant_column, context, count, rows)
    select 'insert', TG_TABLE_SCHEMA, TG_TABLE_NAME, v_keys, v_tenant_column, v_context,
           count(*), json_agg(r.image)
    from (
      select case when v_exclude is null then to_json(n.*)
                  else (to_jsonb(n.*) - v_exclude)::json end as image,
             (row_number() over () - 1) / 1000 as chunk
      from outbox_new n
    ) r
    group by r.chunk;

  elsif TG_OP = 'DELETE' then
    insert into outbox._events
      (op, schema_name, table_name, key_columns, tenant_column, context, count, rows)
    select 'delete', TG_TABLE_SCHEMA, TG_TABLE_NAME, v_keys, v_tenant_column, v_context,
           count(*), json_agg(r.image)
    from (
      select case when v_exclude is null then to_json(o.*)
                  else (to_jsonb(o.*) - v_exclude)::json end as image,
             (row_number() over () - 1) / 1000 as chunk
      from outbox_old o
    ) r
    group by r.chunk;

  elsif TG_OP = 'UPDATE' then
    -- Old and new transition tables are filled in lockstep, one old and one new tuple per
    -- updated row, so their scan positions pair them. Pairing by position rather than by key
    -- keeps an UPDATE that changes primary keys correct: each event carries the old row (old
    -- key) and the new row (new key). test/capture.update.test.ts guards this behaviour.
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
    group by (p.pos - 1) / 1000;
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
--> statement-breakpoint
-- sql/030_capture.sql
-- enable_capture / disable_capture and the outbox.captures view.

-- Names of the given attribute numbers, in the given order, skipping dropped columns.
create or replace function outbox._attnames(p_target regclass, p_attnums int2[])
returns text[]
language sql stable
as $$
  select array_agg(a.attname::text order by u.ord)
  from unnest(p_attnums) with ordinality u(attnum, ord)
  join pg_catalog.pg_attribute a
    on a.attrelid = p_target and a.attnum = u.attnum and not a.attisdropped
$$;

-- Attribute numbers of the given column names; raises a clear error for a name the table
-- lacks. `p_option` names the enable_capture argument in the message.
create or replace function outbox._attnums(p_target regclass, p_names text[], p_option text)
returns int2[]
language plpgsql stable
as $$
declare
  v_missing text;
  v_result int2[];
begin
  if p_names is null then return null; end if;
  select u.name into v_missing
  from unnest(p_names) u(name)
  where u.name is null or not exists (
    select from pg_catalog.pg_attribute a
    where a.attrelid = p_target and a.attname = u.name and a.attnum > 0 and not a.attisdropped)
  limit 1;
  if found then
    raise exception 'outbox.enable_capture: % has no column %', p_target, coalesce(quote_ident(v_missing), 'NULL')
      using errcode = '42703',
            hint = format('Check the %s argument; column names are case-sensitive.', p_option);
  end if;
  select array_agg(a.attnum order by u.ord) into v_result
  from unnest(p_names) with ordinality u(name, ord)
  join pg_catalog.pg_attribute a on a.attrelid = p_target and a.attname = u.name;
  return v_result;
end
$$;

-- The identity columns of a captured row: the primary key, else the REPLICA IDENTITY index.
create or replace function outbox._capture_key_columns(p_target regclass)
returns text[]
language sql stable
as $$
  select array_agg(a.attname::text order by k.ord)
  from pg_catalog.pg_index i
  cross join lateral unnest(i.indkey) with ordinality k(attnum, ord)
  join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
  where i.indexrelid = (
    select i2.indexrelid from pg_catalog.pg_index i2
    where i2.indrelid = p_target and (i2.indisprimary or i2.indisreplident)
    order by i2.indisprimary desc
    limit 1)
$$;

-- The capture triggers a table should have for its options.
create or replace function outbox._capture_trigger_names(p_target regclass, p_operations text[])
returns text[]
language sql stable
as $$
  select array_remove(array[
    case when (select relkind from pg_catalog.pg_class where oid = p_target) = 'p'
      then 'outbox_capture' end,
    case when (select relkind from pg_catalog.pg_class where oid = p_target) = 'r'
      and 'insert' = any(p_operations) then 'outbox_capture_insert' end,
    case when (select relkind from pg_catalog.pg_class where oid = p_target) = 'r'
      and 'update' = any(p_operations) then 'outbox_capture_update' end,
    case when (select relkind from pg_catalog.pg_class where oid = p_target) = 'r'
      and 'delete' = any(p_operations) then 'outbox_capture_delete' end,
    case when 'truncate' = any(p_operations) or 'delete' = any(p_operations)
      then 'outbox_capture_truncate' end,
    'outbox_capture_bypass'
  ], null)
$$;

-- (Re)creates the triggers of one captured table from its row in _captures. Called by
-- enable_capture and by the DDL event trigger after an ALTER TABLE. With p_strict false
-- (the DDL path) a table that lost its key keeps capturing with an empty key and a warning
-- instead of failing the user's ALTER TABLE, and each trigger keeps its enabled state: the
-- ALTER TABLE may be `disable trigger outbox_capture_…` itself, which must stay disabled and
-- show in `health` rather than be silently re-enabled. enable_capture re-enables them all.
create or replace function outbox._capture_install(p_target regclass, p_strict boolean default true)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_capture outbox._captures;
  v_relkind "char";
  v_keys text[];
  v_exclude text[];
  v_args text;
  v_ops text[];
  v_row_ops text;
  v_trigger text;
  v_states jsonb;
  v_state text;
begin
  select * into strict v_capture from outbox._captures where target = p_target;
  select relkind into v_relkind from pg_catalog.pg_class where oid = p_target;

  v_keys := outbox._capture_key_columns(p_target);
  if v_keys is null then
    if p_strict then
      raise exception 'outbox.enable_capture: % has no primary key', p_target
        using errcode = '55000',
              hint = 'Events need a key to identify the row: add a primary key, or set REPLICA IDENTITY USING INDEX on a unique index.';
    end if;
    raise warning 'outbox: captured table % has no primary key any more; its events carry an empty key', p_target;
    v_keys := '{}';
  end if;
  v_exclude := outbox._attnames(p_target, v_capture.exclude_attnums);
  if v_keys && v_exclude then
    raise exception 'outbox.enable_capture: key column of % cannot be excluded', p_target
      using errcode = '22023', hint = 'Events are identified by their key; remove it from exclude_columns.';
  end if;

  perform set_config('outbox._installing', 'on', true);
  select jsonb_object_agg(tgname, tgenabled) into v_states
  from pg_catalog.pg_trigger
  where tgrelid = p_target and not tgisinternal and tgname like 'outbox\_capture%'
    and tgparentid = 0 and not p_strict;
  for v_trigger in
    select tgname from pg_catalog.pg_trigger
    where tgrelid = p_target and not tgisinternal and tgname like 'outbox\_capture%'
      and tgparentid = 0
  loop
    execute format('drop trigger %I on %s', v_trigger, p_target);
  end loop;

  v_args := format('%L, %L, %L, %L',
    v_keys::text,
    coalesce(v_exclude::text, ''),
    coalesce(outbox._attnames(p_target, v_capture.column_attnums)::text, ''),
    coalesce((outbox._attnames(p_target, array[v_capture.tenant_attnum]::int2[]))[1], ''));
  v_ops := v_capture.operations;

  if v_relkind = 'p' then
    select string_agg(upper(op), ' or ') into v_row_ops
    from unnest(v_ops) op where op <> 'truncate';
    if v_row_ops is not null then
      execute format('create trigger outbox_capture after %s on %s for each row execute function outbox.tg_capture__write(%s)',
                     v_row_ops, p_target, v_args);
    end if;
  else
    if 'insert' = any(v_ops) then
      execute format('create trigger outbox_capture_insert after insert on %s referencing new table as outbox_new for each statement execute function outbox.tg_capture__write(%s)',
                     p_target, v_args);
    end if;
    if 'update' = any(v_ops) then
      execute format('create trigger outbox_capture_update after update on %s referencing old table as outbox_old new table as outbox_new for each statement execute function outbox.tg_capture__write(%s)',
                     p_target, v_args);
    end if;
    if 'delete' = any(v_ops) then
      execute format('create trigger outbox_capture_delete after delete on %s referencing old table as outbox_old for each statement execute function outbox.tg_capture__write(%s)',
                     p_target, v_args);
    end if;
  end if;

  if 'truncate' = any(v_ops) then
    execute format('create trigger outbox_capture_truncate after truncate on %s for each statement execute function outbox.tg_capture__truncate(%s)',
                   p_target, v_args);
  elsif 'delete' = any(v_ops) then
    execute format('create trigger outbox_capture_truncate before truncate on %s for each statement execute function outbox.tg_capture__refuse_truncate()',
                   p_target);
  end if;

  execute format('create trigger outbox_capture_bypass after insert or update or delete on %s for each %s execute function outbox.tg_capture__bypass()',
                 p_target, case when v_relkind = 'p' then 'row' else 'statement' end);
  execute format('alter table %s enable replica trigger outbox_capture_bypass', p_target);
  for v_trigger, v_state in
    select t.tgname, s.value
    from pg_catalog.pg_trigger t
    join jsonb_each_text(v_states) s on s.key = t.tgname::text
    where t.tgrelid = p_target and t.tgparentid = 0 and t.tgenabled::text <> s.value
  loop
    execute format('alter table %s %s trigger %I', p_target,
                   case v_state when 'D' then 'disable' when 'R' then 'enable replica'
                                when 'A' then 'enable always' else 'enable' end,
                   v_trigger);
  end loop;
  perform set_config('outbox._installing', '', true);
end
$$;

create or replace function outbox.enable_capture(
  target regclass,
  operations text[] default '{insert,update,delete}',
  columns text[] default null,
  exclude_columns text[] default null,
  tenant_column text default null)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_relkind "char";
  v_is_partition boolean;
  v_bad text;
  v_tenant int2[];
begin
  if target is null then
    raise exception 'outbox.enable_capture: target is null' using errcode = '22004';
  end if;
  select relkind, relispartition into v_relkind, v_is_partition
  from pg_catalog.pg_class where oid = target;
  if v_relkind not in ('r', 'p') then
    raise exception 'outbox.enable_capture: % is a %, not a table', target,
      case v_relkind when 'v' then 'view' when 'm' then 'materialized view'
        when 'f' then 'foreign table' when 'S' then 'sequence' when 'i' then 'index'
        else 'relation of kind ' || v_relkind::text end
      using errcode = '42809', hint = 'Capture works on tables; enable it on the table the view reads.';
  end if;
  if v_is_partition then
    raise exception 'outbox.enable_capture: % is a partition of %', target,
        (select pg_partition_root(target))::regclass
      using errcode = '42809',
            hint = format('Enable capture on its partitioned table %s: that covers every partition, present and future.',
                          (select pg_partition_root(target))::regclass);
  end if;
  if (select relnamespace from pg_catalog.pg_class where oid = target) = 'outbox'::regnamespace then
    raise exception 'outbox.enable_capture: % belongs to pg-outbox itself', target using errcode = '42809';
  end if;

  if operations is null or cardinality(operations) = 0 then
    raise exception 'outbox.enable_capture: operations is empty'
      using errcode = '22023', hint = 'Give one or more of insert, update, delete, truncate.';
  end if;
  select op into v_bad from unnest(operations) op
  where op is null or op not in ('insert', 'update', 'delete', 'truncate') limit 1;
  if found then
    raise exception 'outbox.enable_capture: unknown operation %', coalesce(quote_literal(v_bad), 'NULL')
      using errcode = '22023', hint = 'Operations are insert, update, delete and truncate (lower case).';
  end if;
  if tenant_column = any(exclude_columns) then
    raise exception 'outbox.enable_capture: tenant column % is also excluded', quote_ident(tenant_column)
      using errcode = '22023', hint = 'The tenant is read from the captured row; do not exclude it.';
  end if;
  v_tenant := outbox._attnums(target, case when tenant_column is not null then array[tenant_column] end, 'tenant_column');

  insert into outbox._captures as c
    (target, operations, column_attnums, exclude_attnums, tenant_attnum)
  values (
    target,
    (select array_agg(distinct op order by op) from unnest(operations) op),
    outbox._attnums(target, columns, 'columns'),
    outbox._attnums(target, exclude_columns, 'exclude_columns'),
    v_tenant[1])
  on conflict on constraint _captures_pkey do update set
    operations = excluded.operations,
    column_attnums = excluded.column_attnums,
    exclude_attnums = excluded.exclude_attnums,
    tenant_attnum = excluded.tenant_attnum,
    updated_at = now();

  perform outbox._capture_install(target, true);
end
$$;

create or replace function outbox.disable_capture(target regclass)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_trigger text;
begin
  perform set_config('outbox._installing', 'on', true);
  for v_trigger in
    select tgname from pg_catalog.pg_trigger
    where tgrelid = target and not tgisinternal and tgname like 'outbox\_capture%'
      and tgparentid = 0
  loop
    execute format('drop trigger %I on %s', v_trigger, target);
  end loop;
  delete from outbox._captures where _captures.target = disable_capture.target;
  perform set_config('outbox._installing', '', true);
end
$$;

-- What is wrong with a capture, or 'ok'. Capture must not be bypassed silently (DESIGN
-- guarantee 8): a missing or disabled trigger, or writes made under
-- session_replication_role = replica, show here, in `outbox status` and in the health check.
create or replace function outbox._capture_health(p_target regclass, p_operations text[], p_bypassed bigint)
returns text
language sql stable
as $$
  select coalesce(
    (select 'trigger ' || e.name || ' is missing'
     from unnest(outbox._capture_trigger_names(p_target, p_operations)) e(name)
     where not exists (select from pg_catalog.pg_trigger t
                       where t.tgrelid = p_target and t.tgname = e.name)
     limit 1),
    -- A partition's clone of a capture trigger can be disabled on its own.
    (select 'trigger ' || t.tgname || ' is disabled'
            || case when t.tgrelid <> p_target then ' on partition ' || t.tgrelid::regclass::text else '' end
     from pg_catalog.pg_trigger t
     where (t.tgrelid = p_target
            or t.tgrelid in (select relid from pg_catalog.pg_partition_tree(p_target)))
       and t.tgname like 'outbox\_capture%' and t.tgenabled = 'D'
     order by t.tgrelid <> p_target, t.tgname
     limit 1),
    case when p_bypassed > 0
      then p_bypassed || ' statements bypassed capture under session_replication_role = replica' end,
    case when outbox._capture_key_columns(p_target) is null then 'table has no primary key' end,
    'ok')
$$;

create or replace view outbox.captures as
select
  c.target,
  n.nspname::text as schema_name,
  cl.relname::text as table_name,
  c.operations,
  outbox._attnames(c.target, c.column_attnums) as columns,
  outbox._attnames(c.target, c.exclude_attnums) as exclude_columns,
  (outbox._attnames(c.target, array[c.tenant_attnum]::int2[]))[1] as tenant_column,
  outbox._capture_key_columns(c.target) as key_columns,
  outbox._capture_health(c.target, c.operations, c.bypassed_statements) as health,
  c.bypassed_statements,
  c.last_bypassed_at,
  c.created_at,
  c.updated_at
from outbox._captures c
join pg_catalog.pg_class cl on cl.oid = c.target
join pg_catalog.pg_namespace n on n.oid = cl.relnamespace;
--> statement-breakpoint
-- sql/040_emit.sql
-- outbox.emit: an application event written in the caller's transaction.

-- Topics are dot-separated segments without wildcards, so that subscription patterns
-- (`*` one segment, `**` any number) and future broker subjects can match them.
create or replace function outbox._topic_check(p_topic text)
returns void
language plpgsql immutable
as $$
begin
  if p_topic is null or p_topic !~ '^[^.*#>\s]+(\.[^.*#>\s]+)*$' or length(p_topic) > 255 then
    raise exception 'outbox.emit: invalid topic %', coalesce(quote_literal(p_topic), 'NULL')
      using errcode = '22023',
            hint = 'A topic is dot-separated segments such as ''order.placed'': no empty segment, no whitespace, no wildcard (* # >), at most 255 characters.';
  end if;
end
$$;

create or replace function outbox.emit(topic text, data jsonb, key text default null)
returns uuid
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_id bigint;
  v_created_at timestamptz;
begin
  perform outbox._topic_check(topic);
  insert into outbox._events (op, topic, emit_key, context, count, rows)
  values ('emit', topic, key, outbox._context(), 1, json_build_array(data))
  returning id, created_at into v_id, v_created_at;
  return outbox._event_uuid(v_created_at, v_id << 16);
end
$$;
--> statement-breakpoint
-- sql/050_events_view.sql
-- outbox.events: the public view of events, one row per event, with the envelope assembled
-- from the raw facts the write path stored (see 020_capture_trigger.sql).

-- schema.table.op for captured changes, the emitted topic otherwise.
create or replace function outbox._event_topic(p_event outbox._events)
returns text
language sql immutable parallel safe
as $$
  select coalesce(p_event.topic, p_event.schema_name || '.' || p_event.table_name || '.' || p_event.op)
$$;

-- The key columns of the row as an object for captures; emit's key as a JSON string.
create or replace function outbox._event_key(p_event outbox._events, p_new jsonb, p_old jsonb)
returns jsonb
language sql immutable parallel safe
as $$
  select case
    when p_event.op = 'emit' then to_jsonb(p_event.emit_key)
    when p_event.op = 'truncate' then null
    else (select jsonb_object_agg(k.name, coalesce(p_new, p_old) -> k.name)
          from unnest(p_event.key_columns) k(name))
  end
$$;

-- The tenant column's value when the capture names one, else `outbox.tenant` of the context.
create or replace function outbox._event_tenant(p_event outbox._events, p_new jsonb, p_old jsonb)
returns text
language sql immutable parallel safe
as $$
  select coalesce(coalesce(p_new, p_old) ->> p_event.tenant_column, p_event.context ->> 'tenant')
$$;

-- The envelope of one event (DESIGN.md "The envelope"). Capture events always carry
-- op/table/key/new/old (null where the operation has none) and `changed` for updates;
-- emitted events carry `data` and `key` when one was given. Context fields appear when set.
create or replace function outbox._envelope(
  p_event outbox._events, p_image json, p_position bigint)
returns jsonb
language sql stable parallel safe
as $$
  with images as (
    select
      case p_event.op when 'insert' then p_image::jsonb
                      when 'update' then (p_image -> 1)::jsonb end as new_row,
      case p_event.op when 'delete' then p_image::jsonb
                      when 'update' then (p_image -> 0)::jsonb end as old_row
  )
  select
    jsonb_build_object(
      'id', outbox._event_uuid(p_event.created_at, p_position),
      'type', outbox._event_topic(p_event),
      'time', to_char(p_event.created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
    || case when p_event.op = 'emit' then
         jsonb_build_object('data', p_image::jsonb)
         || case when p_event.emit_key is null then '{}'::jsonb
                 else jsonb_build_object('key', p_event.emit_key) end
       else
         jsonb_build_object(
           'op', p_event.op,
           'table', jsonb_build_object('schema', p_event.schema_name, 'name', p_event.table_name),
           'key', outbox._event_key(p_event, i.new_row, i.old_row),
           'new', i.new_row,
           'old', i.old_row)
         || case when p_event.op = 'update' then jsonb_build_object('changed',
              (select coalesce(jsonb_agg(k.name order by k.name), '[]'::jsonb)
               from json_object_keys(p_image -> 1) k(name)
               where (p_image -> 1 -> k.name)::text is distinct from (p_image -> 0 -> k.name)::text))
            else '{}'::jsonb end
       end
    || coalesce(p_event.context, '{}'::jsonb)
    || case when outbox._event_tenant(p_event, i.new_row, i.old_row) is null then '{}'::jsonb
            else jsonb_build_object('tenant', outbox._event_tenant(p_event, i.new_row, i.old_row)) end
  from images i
$$;

create or replace view outbox.events as
select
  outbox._event_uuid(e.created_at, (e.id << 16) + i.ord - 1) as id,
  (e.id << 16) + i.ord - 1 as position,
  outbox._event_topic(e) as topic,
  e.op,
  e.schema_name,
  e.table_name,
  outbox._event_key(e,
    case e.op when 'insert' then i.image::jsonb when 'update' then (i.image -> 1)::jsonb end,
    case e.op when 'delete' then i.image::jsonb when 'update' then (i.image -> 0)::jsonb end) as key,
  outbox._envelope(e, i.image, (e.id << 16) + i.ord - 1) as payload,
  outbox._event_tenant(e,
    case e.op when 'insert' then i.image::jsonb when 'update' then (i.image -> 1)::jsonb end,
    case e.op when 'delete' then i.image::jsonb when 'update' then (i.image -> 0)::jsonb end) as tenant,
  e.xid,
  e.created_at
from outbox._events e
cross join lateral json_array_elements(e.rows) with ordinality i(image, ord);
--> statement-breakpoint
-- sql/060_ddl.sql
-- Following schema changes of captured tables.
--
-- The capture trigger names no column, so writes keep working through any ALTER TABLE. What
-- the trigger arguments do hold are names (key, excluded, watched and tenant columns); the
-- options themselves are stored as attribute numbers, so after an ALTER TABLE the triggers
-- are reinstalled with the current names: a renamed excluded column stays excluded, a new
-- primary key becomes the event key. A new column appears in new/old from the next write on
-- (it is not excluded, and not watched when `columns` is set).
--
-- Event triggers need a superuser to create. Without one, migrate() skips them with a
-- warning and the README says to call enable_capture again after renaming a key, excluded,
-- watched or tenant column.

create or replace function outbox.tg_outbox__ddl_end()
returns event_trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_target regclass;
begin
  if current_setting('outbox._installing', true) = 'on' then
    return;
  end if;
  for v_target in
    select distinct c.target
    from pg_event_trigger_ddl_commands() d
    join outbox._captures c on c.target = d.objid
    where d.classid = 'pg_catalog.pg_class'::regclass
  loop
    perform outbox._capture_install(v_target, false);
  end loop;
end
$$;

create or replace function outbox.tg_outbox__sql_drop()
returns event_trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  delete from outbox._captures c
  using pg_event_trigger_dropped_objects() d
  where d.object_type = 'table' and d.objid = c.target::oid;
end
$$;

do $$
begin
  if not (select rolsuper from pg_catalog.pg_roles where rolname = current_user) then
    raise warning 'outbox: not a superuser, so schema changes of captured tables are not followed automatically'
      using hint = 'After renaming a key, excluded, watched or tenant column of a captured table, call outbox.enable_capture again.';
    return;
  end if;
  if not exists (select from pg_catalog.pg_event_trigger where evtname = 'outbox_ddl_end') then
    create event trigger outbox_ddl_end on ddl_command_end
      when tag in ('ALTER TABLE', 'CREATE INDEX', 'ALTER INDEX')
      execute function outbox.tg_outbox__ddl_end();
  end if;
  if not exists (select from pg_catalog.pg_event_trigger where evtname = 'outbox_sql_drop') then
    create event trigger outbox_sql_drop on sql_drop
      when tag in ('DROP TABLE', 'DROP SCHEMA', 'DROP OWNED')
      execute function outbox.tg_outbox__sql_drop();
  end if;
end
$$;
--> statement-breakpoint
-- sql/090_privileges.sql
-- Privileges: applied last, after every function of sql/ exists.

-- Applications write events only through the capture triggers and outbox.emit (both
-- security definer): their roles need no rights on these tables.
revoke all on all tables in schema outbox from public;
revoke all on all functions in schema outbox from public;

-- Reading the public views is for operators: grant select on outbox.events, outbox.captures
-- (and execute on outbox.emit for apps that emit) to the roles that need them.
