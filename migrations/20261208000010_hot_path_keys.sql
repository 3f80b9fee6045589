-- The hot path (issue 19, docs/benchmarks.md "Written once"): `herald.deliveries` no longer
-- checks its endpoint through a foreign key. Every delivery written looked up and
-- share-locked its endpoint's row (with one endpoint and many writers, a MultiXact for
-- each); endpoints are never removed (a deleted one keeps its row, `deleted_at`), and
-- Herald writes a delivery only for an endpoint it matched.
--
-- The key's name depends on the database's history (`…_fkey`, or `…_fkey1` where the
-- table of an earlier version kept the first name, now the `legacy` partition's), so
-- every key from the deliveries' tables to the endpoints is found by what it is; a
-- partition's own key (not one it took from the parent) is dropped too.
DO $$
DECLARE
    key record;
BEGIN
    FOR key IN
        SELECT c.conname, c.conrelid::regclass AS tab
        FROM pg_constraint c
        JOIN pg_partition_tree('herald.deliveries') t ON t.relid = c.conrelid
        WHERE c.contype = 'f' AND c.confrelid = 'herald.endpoints'::regclass
          AND c.conparentid = 0
    LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', key.tab, key.conname);
    END LOOP;
END;
$$;

-- Nothing reads events by (type, received_at): the event list and replays match the
-- type by a pattern (`'.' || type ~ …`), which no index on `type` serves; the index was
-- only one more entry to write for every event.
DROP INDEX IF EXISTS herald.events_by_type;
