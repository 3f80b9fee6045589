-- Day partitions are created standalone and then attached (docs/retention.md).
-- `CREATE TABLE … PARTITION OF` takes an ACCESS EXCLUSIVE lock on the parent table:
-- it waits for every transaction using `herald.events` (deliveries, attempts) and
-- every hot statement queues behind it. `ALTER TABLE … ATTACH PARTITION` takes only
-- SHARE UPDATE EXCLUSIVE on the parent, which ingest, recording and the API never
-- wait for. The new table is empty, so attaching scans nothing; its indexes are made
-- to match the parent's by the attach itself.

CREATE OR REPLACE FUNCTION herald.create_partitions(first timestamptz, last timestamptz)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    day date := (first AT TIME ZONE 'UTC')::date;
    day_starts timestamptz;
    day_ends timestamptz;
    suffix text;
    made integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('herald partitions'));
    WHILE day <= (last AT TIME ZONE 'UTC')::date LOOP
        day_starts := day::timestamp AT TIME ZONE 'UTC';
        day_ends := (day + 1)::timestamp AT TIME ZONE 'UTC';
        suffix := to_char(day, 'YYYYMMDD');
        IF NOT EXISTS (SELECT 1 FROM herald.partitions p
                       WHERE p.starts < day_ends AND p.ends > day_starts) THEN
            EXECUTE format('CREATE TABLE herald.events_%s
                                (LIKE herald.events INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING CONSTRAINTS)',
                           suffix);
            EXECUTE format('ALTER TABLE herald.events ATTACH PARTITION herald.events_%s
                            FOR VALUES FROM (%L) TO (%L)', suffix, day_starts, day_ends);
            EXECUTE format('CREATE TABLE herald.deliveries_%s
                                (LIKE herald.deliveries INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING CONSTRAINTS)',
                           suffix);
            EXECUTE format('ALTER TABLE herald.deliveries ATTACH PARTITION herald.deliveries_%s
                            FOR VALUES FROM (%L) TO (%L)', suffix,
                           herald.uuid_v7_floor(day_starts), herald.uuid_v7_floor(day_ends));
            EXECUTE format('CREATE TABLE herald.delivery_attempts_%s
                                (LIKE herald.delivery_attempts INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING CONSTRAINTS)',
                           suffix);
            EXECUTE format('ALTER TABLE herald.delivery_attempts
                            ATTACH PARTITION herald.delivery_attempts_%s
                            FOR VALUES FROM (%L) TO (%L)', suffix,
                           herald.uuid_v7_floor(day_starts), herald.uuid_v7_floor(day_ends));
            INSERT INTO herald.partitions (name, starts, ends) VALUES (suffix, day_starts, day_ends);
            made := made + 1;
        END IF;
        day := day + 1;
    END LOOP;
    RETURN made;
END;
$$;
