-- Waking idle workers without taxing the write path (DESIGN.md "The write path is sacred").
--
-- A NOTIFY in every write transaction halves write throughput: committing transactions that
-- notified are serialized on a global lock. So the write path notifies only while some
-- worker has said it is idle (outbox._workers.idle_until in the future). A busy worker
-- finds new work by reading; an idle mark expires, so a worker that crashed while idle stops
-- costing writes within seconds. Checking costs one scan of a table of a few rows. The
-- capture triggers inline the same check (see there); emit and dispatch call this.
drop function if exists outbox._wake();
create or replace function outbox._wake(p_except text default null)
returns void
language plpgsql
as $$
begin
  if exists (select from outbox._workers w where w.idle_until > now() and w.id is distinct from p_except) then
    perform pg_notify('outbox_wake', '');
  end if;
end
$$;
