-- Endpoint health (issue 15): the circuit breaker every process of a deployment shares,
-- and the outbox of operational events (contract §9).

-- One row per endpoint whose current streak has failures; a success deletes it, so the
-- table holds only endpoints in trouble and every process reads it whole each second.
CREATE TABLE herald.endpoint_health (
    endpoint_id uuid PRIMARY KEY REFERENCES herald.endpoints (id) ON DELETE CASCADE,
    -- Failed attempts since the last success.
    consecutive_failures integer NOT NULL DEFAULT 0,
    -- The first failure of the streak: `delivery.disable_after` counts from here.
    failing_since timestamptz NOT NULL DEFAULT now(),
    -- Set while the breaker is open (the endpoint is `failing`).
    open_since timestamptz,
    -- While open: when the next probe attempt may go; claimed by moving it on.
    next_probe_at timestamptz,
    last_status_code integer,
    last_error text,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Operational events, written in the transaction that makes the change they report and
-- published to `<prefix>.ops` with confirms by any process (SKIP LOCKED), then marked.
CREATE TABLE herald.ops_events (
    seq bigserial PRIMARY KEY,
    id uuid NOT NULL UNIQUE,
    type text NOT NULL,
    tenant_id text,
    data jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX ops_events_unpublished ON herald.ops_events (seq) WHERE published_at IS NULL;
CREATE INDEX ops_events_published ON herald.ops_events (published_at) WHERE published_at IS NOT NULL;
