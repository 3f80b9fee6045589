-- An event is identified by its tenant and its id (contract §4): the same id from two
-- tenants is two events. Until now `herald.events.id` alone was the key, so tenant B's
-- `order-1` was taken for a duplicate of tenant A's and never delivered.
--
-- `tenant_key` is the tenant id, or '' for an event without a tenant: a key column
-- cannot be NULL, and `tenant_id` itself stays as it was for everyone reading it
-- (NULL when there is no tenant). Deliveries carry their event's key.

ALTER TABLE herald.events
    ADD COLUMN tenant_key text GENERATED ALWAYS AS (coalesce(tenant_id, '')) STORED;

ALTER TABLE herald.deliveries ADD COLUMN tenant_key text;
UPDATE herald.deliveries d SET tenant_key = e.tenant_key
    FROM herald.events e WHERE e.id = d.event_id;
ALTER TABLE herald.deliveries
    ALTER COLUMN tenant_key SET NOT NULL,
    DROP CONSTRAINT deliveries_event_id_fkey,
    DROP CONSTRAINT deliveries_event_id_endpoint_id_key;

ALTER TABLE herald.events DROP CONSTRAINT events_pkey;
ALTER TABLE herald.events ADD CONSTRAINT events_pkey PRIMARY KEY (tenant_key, id);

ALTER TABLE herald.deliveries
    ADD CONSTRAINT deliveries_event_fkey
        FOREIGN KEY (tenant_key, event_id) REFERENCES herald.events (tenant_key, id),
    ADD CONSTRAINT deliveries_event_endpoint_key UNIQUE (tenant_key, event_id, endpoint_id);
