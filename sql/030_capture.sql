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
