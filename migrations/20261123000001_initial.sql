-- Herald's records (contract §7). Everything lives in schema `herald`.
CREATE SCHEMA IF NOT EXISTS herald;

-- Subscribers. `secret` is the whsec_ signing secret; `previous_secret` keeps signing
-- alongside it until `previous_secret_expires_at` while receivers rotate.
CREATE TABLE herald.endpoints (
    id                         uuid PRIMARY KEY,
    url                        text NOT NULL,
    tenant_id                  text,
    event_types                text[] NOT NULL CHECK (cardinality(event_types) > 0),
    secret                     text NOT NULL,
    previous_secret            text,
    previous_secret_expires_at timestamptz,
    enabled                    boolean NOT NULL DEFAULT true,
    disabled_reason            text,
    rate_limit                 integer CHECK (rate_limit IS NULL OR rate_limit > 0),
    description                text,
    deleted_at                 timestamptz,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    updated_at                 timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX endpoints_tenant ON herald.endpoints (tenant_id) WHERE deleted_at IS NULL;

-- Every accepted event, matched or not (replay to endpoints created later needs them).
-- `payload` is `json`, not `jsonb`: the publisher's data is kept byte for byte.
CREATE TABLE herald.events (
    id          text PRIMARY KEY,
    type        text NOT NULL,
    tenant_id   text,
    source      text,
    occurred_at timestamptz NOT NULL,
    payload     json NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    -- Set once every delivery task of the event is confirmed by the broker. A
    -- redelivered message whose event has it set needs nothing republished.
    dispatched_at timestamptz
);
CREATE INDEX events_received_at ON herald.events (received_at);
CREATE INDEX events_type ON herald.events (type, received_at);

-- One row per event × endpoint.
CREATE TABLE herald.deliveries (
    id               uuid PRIMARY KEY,
    event_id         text NOT NULL REFERENCES herald.events (id),
    endpoint_id      uuid NOT NULL REFERENCES herald.endpoints (id),
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'retrying', 'success', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_retry_at    timestamptz,
    last_status_code integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    UNIQUE (event_id, endpoint_id)
);
CREATE INDEX deliveries_endpoint ON herald.deliveries (endpoint_id, created_at DESC);
CREATE INDEX deliveries_unfinished ON herald.deliveries (status, updated_at)
    WHERE status IN ('pending', 'retrying', 'failed');

-- One row per HTTP attempt; `error` is the failure class when there was no response.
CREATE TABLE herald.delivery_attempts (
    delivery_id   uuid NOT NULL REFERENCES herald.deliveries (id),
    attempt       integer NOT NULL CHECK (attempt >= 1),
    status_code   integer,
    error         text,
    duration_ms   integer NOT NULL,
    response_body text,
    attempted_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (delivery_id, attempt)
);

-- Subscription caches in every Herald process reload when endpoints change.
CREATE FUNCTION herald.notify_endpoints_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('herald_endpoints', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER endpoints_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON herald.endpoints
    FOR EACH STATEMENT EXECUTE FUNCTION herald.notify_endpoints_changed();
