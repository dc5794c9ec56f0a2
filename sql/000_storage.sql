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
