-- The admin API's record lists at 10,000,000 deliveries (issue 19 "growth";
-- docs/benchmarks.md "Growth"). The delivery lists joined every page's rows to
-- `herald.events` by (tenant_key, id), which cannot prune the events partitions (by
-- `received_at`): each row probed every day's partition, and a filter on the event's
-- type joined the whole history. And their indexes ordered by what the lists do not
-- order by.
--
-- 1. A delivery carries its event's type (`event_type`), written by ingest with the row;
--    the tenant is already there (`tenant_key`). The lists read deliveries alone.
--    Rows written without it (by a Herald of an earlier version during a rolling
--    upgrade, or by hand) get it from their event on insert; rows already recorded get
--    it here, once.
-- 2. Indexes in the lists' order (`id`, a UUIDv7: newest last) for each filter:
--    endpoint, status (not `success`), event type, tenant. Two replace indexes in
--    another order that only these lists and per-endpoint counts used.
--
-- Idempotent: every step checks what is there, so a database where part of it ran
-- (or all) takes it again unharmed.

ALTER TABLE herald.deliveries ADD COLUMN IF NOT EXISTS event_type text;

-- The indexes replaced go first: the backfill below does not have to update them.
DROP INDEX IF EXISTS herald.deliveries_by_endpoint;
DROP INDEX IF EXISTS herald.deliveries_not_succeeded;

UPDATE herald.deliveries d SET event_type = e.type
    FROM herald.events e
    WHERE d.event_type IS NULL AND e.tenant_key = d.tenant_key AND e.id = d.event_id;

CREATE OR REPLACE FUNCTION herald.delivery_event_type() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    SELECT e.type INTO NEW.event_type FROM herald.events e
        WHERE e.tenant_key = NEW.tenant_key AND e.id = NEW.event_id LIMIT 1;
    RETURN NEW;
END;
$$;
DROP TRIGGER IF EXISTS deliveries_event_type ON herald.deliveries;
CREATE TRIGGER deliveries_event_type BEFORE INSERT ON herald.deliveries
    FOR EACH ROW WHEN (NEW.event_type IS NULL)
    EXECUTE FUNCTION herald.delivery_event_type();

CREATE INDEX IF NOT EXISTS deliveries_by_endpoint_id ON herald.deliveries (endpoint_id, id);
CREATE INDEX IF NOT EXISTS deliveries_unfinished_by_id ON herald.deliveries (status, id)
    WHERE status IN ('pending', 'retrying', 'failed');
CREATE INDEX IF NOT EXISTS deliveries_by_event_type ON herald.deliveries (event_type, id);
CREATE INDEX IF NOT EXISTS deliveries_by_tenant ON herald.deliveries (tenant_key, id);

-- 3. The event list's order is (received_at, tenant_key, id), its keyset too: one index
--    in that order replaces the one on `received_at` alone (which sorted every page's
--    ties and fetched a row from the table for each candidate of a tenant filter).
DROP INDEX IF EXISTS herald.events_by_received_at;
CREATE INDEX IF NOT EXISTS events_by_arrival ON herald.events (received_at, tenant_key, id);
