-- The admin API's record lists at 10,000,000 deliveries (issue 19 "growth";
-- docs/benchmarks.md "Growth"). The delivery lists joined every page's rows to
-- `herald.events` by (tenant_key, id), which cannot prune the events partitions (by
-- `received_at`): each row probed every day's partition, and a filter on the event's
-- type joined the whole history. And their indexes ordered by what the lists do not
-- order by.
--
-- This migration does only what is cheap on a table of any size: it changes the
-- catalog, reads and writes no rows, and holds its locks for milliseconds (at most
-- 5 s of waiting for them; a busy database fails the migration instead of queueing the
-- hot path behind it, and `herald migrate` can simply run again). The work that is
-- proportional to the history — filling the new column of the rows already recorded,
-- building the indexes on every day partition — is done after it by `herald migrate`
-- in short transactions and with `CREATE INDEX CONCURRENTLY`, resumably, while Herald
-- serves (src/store/upgrade.rs; docs/operations.md "Upgrading a large database").
SET LOCAL lock_timeout = '5s';

-- 1. A delivery carries its event's type (`event_type`), written by ingest with the
--    row; the tenant is already there (`tenant_key`). The lists read deliveries alone.
--    Nullable, no default: adding it rewrites nothing.
ALTER TABLE herald.deliveries ADD COLUMN IF NOT EXISTS event_type text;

-- Rows written without it (by a Herald of the previous version during a rolling
-- upgrade, or by hand) get it from their event on insert. Rows recorded before this
-- migration are filled by `herald migrate`'s backfill (src/store/upgrade.rs).
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

-- 2. The lists' indexes, declared on the parents only (`ON ONLY`: no partition is
--    read or locked). `herald migrate` then builds each partition's index
--    concurrently and attaches it; a day created later gets them when it is attached
--    (herald.create_partitions). The indexes they replace are dropped once these are
--    built (src/store/upgrade.rs), so the lists never go without one.
--    Deliveries, in the lists' order (`id`, a UUIDv7: newest last), one per filter:
CREATE INDEX IF NOT EXISTS deliveries_by_endpoint_id ON ONLY herald.deliveries (endpoint_id, id);
CREATE INDEX IF NOT EXISTS deliveries_unfinished_by_id ON ONLY herald.deliveries (status, id)
    WHERE status IN ('pending', 'retrying', 'failed');
CREATE INDEX IF NOT EXISTS deliveries_by_event_type ON ONLY herald.deliveries (event_type, id);
CREATE INDEX IF NOT EXISTS deliveries_by_tenant ON ONLY herald.deliveries (tenant_key, id);
--    Events: the list's order and keyset are (received_at, tenant_key, id); a tenant's
--    list reads its own range of (tenant_key, received_at, id).
CREATE INDEX IF NOT EXISTS events_by_arrival ON ONLY herald.events (received_at, tenant_key, id);
CREATE INDEX IF NOT EXISTS events_by_tenant_arrival ON ONLY herald.events (tenant_key, received_at, id);

-- 3. Where the backfill got to (resumable: a run that stops, or is stopped, goes on
--    from here), and when it finished (a later run skips it).
CREATE TABLE IF NOT EXISTS herald.upgrade_steps (
    name text PRIMARY KEY,
    -- The backfill's position: every delivery with a smaller id has been looked at.
    cursor uuid,
    done_at timestamptz
);
