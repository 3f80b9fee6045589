-- Replays (`POST /api/v1/endpoints/{id}/replay`, `herald replay`): stored events sent
-- again to one endpoint, as a background job that records its progress. The cursor is
-- the (received_at, tenant_key, id) of the last event handled; `heartbeat_at` moves
-- with every page, so a job whose process died is found and taken over.
CREATE TABLE herald.replays (
    id           uuid PRIMARY KEY,
    endpoint_id  uuid NOT NULL REFERENCES herald.endpoints (id),
    tenant_id    text,
    since        timestamptz NOT NULL,
    until        timestamptz NOT NULL,
    only_failed  boolean NOT NULL,
    state        text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'done', 'failed')),
    matched      bigint NOT NULL,
    sent         bigint NOT NULL DEFAULT 0,
    skipped      bigint NOT NULL DEFAULT 0,
    cursor_at    timestamptz,
    cursor_key   text,
    cursor_id    text,
    error        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
CREATE INDEX replays_running ON herald.replays (heartbeat_at) WHERE state = 'running';
