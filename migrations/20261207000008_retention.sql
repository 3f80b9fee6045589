-- Retention (issue 19, docs/retention.md): `herald.events`, `herald.deliveries` and
-- `herald.delivery_attempts` become tables partitioned by UTC day, so that what is older
-- than `retention.window` is removed by dropping a whole day's partitions, never by
-- deleting rows (which bloats the tables and stalls the hot path).
--
--   events             by `received_at`
--   deliveries         by `id`, a UUIDv7: its first 48 bits are its creation time in ms,
--                      so a lookup by id still finds its one partition
--   delivery_attempts  by `delivery_id`: an attempt lives in its delivery's day
--
-- The rows an earlier version left stay where they are: the old tables become one
-- partition each, `<table>_legacy`, covering everything before tomorrow (UTC), removed
-- as a whole once tomorrow is older than the window. On an empty database they are
-- simply dropped.
--
-- A partitioned table's unique keys must contain its partition key, so the event's
-- identity (tenant, id) is no longer unique in `herald.events`: idempotency moves to
-- `herald.event_keys`, a ring of three slots (see below).

-- The smallest UUIDv7 of a moment: the bound of a deliveries (attempts) partition.
CREATE FUNCTION herald.uuid_v7_floor(at timestamptz) RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT (lpad(to_hex(floor(extract(epoch FROM at) * 1000)::bigint), 12, '0')
            || '00000000000000000000')::uuid
$$;

-- A new random UUIDv7 of a moment (for rows written by SQL: seeding, restores).
CREATE FUNCTION herald.uuid_v7(at timestamptz) RETURNS uuid
LANGUAGE sql VOLATILE STRICT AS $$
    SELECT (lpad(to_hex(floor(extract(epoch FROM at) * 1000)::bigint), 12, '0')
            || '7' || substr(md5(random()::text), 1, 3)
            || to_hex(8 + floor(random() * 4)::int) || substr(md5(random()::text), 1, 15))::uuid
$$;

-- One row per day of partitions (the same bounds for the three tables): `name` is the
-- suffix of their names, `legacy` or `YYYYMMDD`.
CREATE TABLE herald.partitions (
    name   text PRIMARY KEY,
    starts timestamptz NOT NULL,
    ends   timestamptz NOT NULL UNIQUE,
    CHECK (starts < ends)
);

-- Foreign keys to partitioned tables would have to include their partition keys, and
-- would make every partition drop check the others: Herald writes these rows itself.
ALTER TABLE herald.deliveries DROP CONSTRAINT deliveries_event_fkey;
ALTER TABLE herald.delivery_attempts DROP CONSTRAINT delivery_attempts_delivery_id_fkey;

ALTER TABLE herald.events RENAME TO events_legacy;
ALTER TABLE herald.deliveries RENAME TO deliveries_legacy;
ALTER TABLE herald.delivery_attempts RENAME TO delivery_attempts_legacy;

CREATE TABLE herald.events
    (LIKE herald.events_legacy INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (received_at);
CREATE INDEX events_key ON herald.events (tenant_key, id);
CREATE INDEX events_by_received_at ON herald.events (received_at);
CREATE INDEX events_by_type ON herald.events (type, received_at);

CREATE TABLE herald.deliveries
    (LIKE herald.deliveries_legacy INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (id);
ALTER TABLE herald.deliveries ADD PRIMARY KEY (id),
    ADD FOREIGN KEY (endpoint_id) REFERENCES herald.endpoints (id);
CREATE INDEX deliveries_of_event ON herald.deliveries (tenant_key, event_id, endpoint_id);
CREATE INDEX deliveries_by_endpoint ON herald.deliveries (endpoint_id, created_at DESC);
CREATE INDEX deliveries_not_succeeded ON herald.deliveries (status, updated_at)
    WHERE status IN ('pending', 'retrying', 'failed');
CREATE INDEX deliveries_dead_letters ON herald.deliveries (id)
    WHERE status = 'failed' AND dead_at IS NOT NULL AND purged_at IS NULL;
CREATE INDEX deliveries_dead_letters_by_endpoint ON herald.deliveries (endpoint_id, id)
    WHERE status = 'failed' AND dead_at IS NOT NULL AND purged_at IS NULL;
CREATE INDEX deliveries_ordered_waiting ON herald.deliveries (endpoint_id, ordering_key, ordering_seq)
    WHERE ordering_key IS NOT NULL AND status = 'pending';

CREATE TABLE herald.delivery_attempts
    (LIKE herald.delivery_attempts_legacy INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (delivery_id);
ALTER TABLE herald.delivery_attempts ADD PRIMARY KEY (delivery_id, attempt);

-- Creates the partitions of every UTC day from `first` to `last` not yet covered; safe
-- to call from several processes at once. Returns how many days it created.
CREATE FUNCTION herald.create_partitions(first timestamptz, last timestamptz) RETURNS integer
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
            EXECUTE format('CREATE TABLE herald.events_%s PARTITION OF herald.events
                            FOR VALUES FROM (%L) TO (%L)', suffix, day_starts, day_ends);
            EXECUTE format('CREATE TABLE herald.deliveries_%s PARTITION OF herald.deliveries
                            FOR VALUES FROM (%L) TO (%L)', suffix,
                           herald.uuid_v7_floor(day_starts), herald.uuid_v7_floor(day_ends));
            EXECUTE format('CREATE TABLE herald.delivery_attempts_%s PARTITION OF herald.delivery_attempts
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

-- The old tables: one partition each, or gone when they hold nothing.
DO $$
DECLARE
    tomorrow timestamptz :=
        ((now() AT TIME ZONE 'UTC')::date + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
    IF EXISTS (SELECT 1 FROM herald.events_legacy)
       OR EXISTS (SELECT 1 FROM herald.deliveries_legacy) THEN
        -- Herald has always made delivery ids UUIDv7 of their creation time; a row that
        -- is not (written by hand) would have no day to live in.
        IF EXISTS (SELECT 1 FROM herald.deliveries_legacy
                   WHERE id >= herald.uuid_v7_floor(tomorrow)) THEN
            RAISE EXCEPTION 'herald.deliveries holds ids that are not UUIDv7 of a past moment (Herald writes only those); give them such ids, or remove them, and migrate again';
        END IF;
        EXECUTE format('ALTER TABLE herald.events ATTACH PARTITION herald.events_legacy
                        FOR VALUES FROM (MINVALUE) TO (%L)', tomorrow);
        EXECUTE format('ALTER TABLE herald.deliveries ATTACH PARTITION herald.deliveries_legacy
                        FOR VALUES FROM (MINVALUE) TO (%L)', herald.uuid_v7_floor(tomorrow));
        EXECUTE format('ALTER TABLE herald.delivery_attempts ATTACH PARTITION herald.delivery_attempts_legacy
                        FOR VALUES FROM (MINVALUE) TO (%L)', herald.uuid_v7_floor(tomorrow));
        INSERT INTO herald.partitions (name, starts, ends) VALUES ('legacy', '-infinity', tomorrow);
    ELSE
        DROP TABLE herald.delivery_attempts_legacy, herald.deliveries_legacy, herald.events_legacy;
    END IF;
END;
$$;

SELECT herald.create_partitions(now(), now() + interval '3 days');

-- Idempotency (contract §4): an event's (tenant, id) is remembered in one of three slots.
-- The current slot takes new keys; a key is new when neither the current nor the
-- previous slot holds it. When the current slot's span (`retention.window`) is over, the
-- third slot, holding keys older than two spans, is emptied (TRUNCATE: no row deletes)
-- and becomes the current one. So an id is remembered for at least one window and at
-- most two, and checking it costs two index probes, however many days are kept.
CREATE TABLE herald.event_keys (
    slot        smallint NOT NULL,
    tenant_key  text NOT NULL,
    id          text NOT NULL,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (slot, tenant_key, id)
) PARTITION BY LIST (slot);
CREATE TABLE herald.event_keys_0 PARTITION OF herald.event_keys FOR VALUES IN (0);
CREATE TABLE herald.event_keys_1 PARTITION OF herald.event_keys FOR VALUES IN (1);
CREATE TABLE herald.event_keys_2 PARTITION OF herald.event_keys FOR VALUES IN (2);

-- The slots' spans; the current slot is the one that ends last.
CREATE TABLE herald.event_key_slots (
    slot   smallint PRIMARY KEY CHECK (slot IN (0, 1, 2)),
    starts timestamptz NOT NULL,
    ends   timestamptz NOT NULL
);
-- Slot 0 takes the keys of the events kept so far and ends now: the first batch
-- ingested makes slot 1 current, and those keys stay known for one more window.
INSERT INTO herald.event_key_slots VALUES
    (0, '-infinity', now()), (1, '-infinity', '-infinity'), (2, '-infinity', '-infinity');
INSERT INTO herald.event_keys (slot, tenant_key, id, received_at)
    SELECT 0, tenant_key, id, received_at FROM herald.events;

-- Makes the current slot one whose span contains `at`, emptying the oldest slot when the
-- current one's span is over (`span` is `retention.window`). Returns the current
-- slot's end. One caller at a time; a no-op while the current span lasts.
CREATE FUNCTION herald.rotate_event_keys(at timestamptz, span interval) RETURNS timestamptz
LANGUAGE plpgsql AS $$
DECLARE
    current_slot smallint;
    current_ends timestamptz;
    next_slot smallint;
    next_starts timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('herald event keys'));
    SELECT slot, ends INTO current_slot, current_ends
        FROM herald.event_key_slots ORDER BY ends DESC LIMIT 1;
    IF at < current_ends THEN
        RETURN current_ends;
    END IF;
    next_slot := (current_slot + 1) % 3;
    -- Long idle (more than a span past the end): the new span starts now.
    next_starts := CASE WHEN at >= current_ends + span THEN at ELSE current_ends END;
    EXECUTE format('TRUNCATE herald.event_keys_%s', next_slot);
    UPDATE herald.event_key_slots SET starts = next_starts, ends = next_starts + span
        WHERE slot = next_slot;
    RETURN next_starts + span;
END;
$$;
