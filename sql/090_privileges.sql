-- Privileges: applied last, after every function of sql/ exists.

-- Applications write events only through the capture triggers and outbox.emit (both
-- security definer): their roles need no rights on these tables.
revoke all on all tables in schema outbox from public;
revoke all on all functions in schema outbox from public;

-- Reading the public views is for operators: grant select on outbox.events, outbox.captures
-- (and execute on outbox.emit for apps that emit) to the roles that need them.
