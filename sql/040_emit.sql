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
  perform outbox._wake();
  return outbox._event_uuid(v_created_at, v_id << 16);
end
$$;
