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
