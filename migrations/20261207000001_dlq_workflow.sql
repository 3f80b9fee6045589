-- The dead-letter workflow (issue 15): the records say which deliveries are in the
-- dead-letter queue, why and since when, and whether an SRE purged them; redrive and
-- purge run as jobs that record their progress.
--
-- Only nullable columns are added (no table rewrite); the backfill touches failed
-- deliveries only.

ALTER TABLE herald.deliveries
    ADD COLUMN dead_reason text,
    ADD COLUMN dead_at     timestamptz,
    ADD COLUMN purged_at   timestamptz;

-- Failed deliveries of earlier versions: their reason is the first word of last_error
-- (`retries_exhausted: HTTP 500`), their time of death the last update. A delivery a
-- replay created but has not sent yet (`replay: …`) is not dead.
UPDATE herald.deliveries
SET dead_reason = CASE
        WHEN split_part(last_error, ':', 1) IN
             ('retries_exhausted', 'endpoint_disabled', 'endpoint_deleted', 'gone')
        THEN split_part(last_error, ':', 1)
        ELSE 'unknown' END,
    dead_at = updated_at
WHERE status = 'failed' AND coalesce(last_error, '') NOT LIKE 'replay:%';

-- What the dead-letter queue holds, by id (keyset order of lists and jobs).
CREATE INDEX deliveries_dead ON herald.deliveries (id)
    WHERE status = 'failed' AND dead_at IS NOT NULL AND purged_at IS NULL;
CREATE INDEX deliveries_dead_endpoint ON herald.deliveries (endpoint_id, id)
    WHERE status = 'failed' AND dead_at IS NOT NULL AND purged_at IS NULL;

CREATE TABLE herald.dlq_jobs (
    id                uuid PRIMARY KEY,
    kind              text NOT NULL CHECK (kind IN ('redrive', 'purge')),
    -- A tenant token's tenant: the job touches its endpoints' deliveries only.
    scope             text,
    -- The filter or the ids, as given (`crate::service::dlq::Selection`).
    selection         jsonb NOT NULL,
    enable_endpoints  boolean NOT NULL DEFAULT false,
    state             text NOT NULL DEFAULT 'running'
                      CHECK (state IN ('running', 'done', 'failed')),
    matched           bigint NOT NULL,
    processed         bigint NOT NULL DEFAULT 0,
    refused           bigint NOT NULL DEFAULT 0,
    -- Per endpoint refused: {"<endpoint id>": {"reason": …, "deliveries": n}}.
    refusals          jsonb NOT NULL DEFAULT '{}',
    enabled_endpoints uuid[] NOT NULL DEFAULT '{}',
    not_found         uuid[] NOT NULL DEFAULT '{}',
    -- Stale copies taken out of the dead-letter queue at the end (NULL: not swept).
    swept             bigint,
    cursor_id         uuid,
    error             text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz
);
CREATE INDEX dlq_jobs_running ON herald.dlq_jobs (updated_at) WHERE state = 'running';
