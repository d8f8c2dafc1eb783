-- Relay replicas claim pending rows for a short lease (FOR UPDATE SKIP LOCKED), so that N
-- replicas publish each row once; a replica that dies holding a claim loses it when it lapses.
ALTER TABLE outbox ADD COLUMN claimed_until timestamptz;
-- A row that holds no valid event is set aside with why (and logged) instead of stalling the
-- relay behind it forever.
ALTER TABLE outbox ADD COLUMN dead_reason text;
