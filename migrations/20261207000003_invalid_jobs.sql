-- Reingest and purge of the parking queue `<prefix>.invalid` as jobs (issue 15): the API
-- answers 202 at once and any `api` process answers for the job's progress.
--
-- Its own table, not `herald.dlq_jobs`: a dead-letter job works through the records by
-- a cursor and is resumed by another process; a parking-queue job walks the broker's
-- queue holding what it walked, cannot be resumed, and counts other things (see
-- `crate::service::invalid_jobs`). One table for both would leave half the columns
-- of each row empty and loosen both CHECKs.

CREATE TABLE herald.invalid_jobs (
    id          uuid PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('reingest', 'purge')),
    -- What the job takes, as given: {"all": …, "ids": […], "reason": …}.
    selection   jsonb NOT NULL,
    state       text NOT NULL DEFAULT 'running'
                CHECK (state IN ('running', 'done', 'failed')),
    -- Messages in the parking queue when the walk began (0 until it began).
    depth       bigint NOT NULL DEFAULT 0,
    -- Messages looked at so far.
    seen        bigint NOT NULL DEFAULT 0,
    -- Reingested or purged (by `kind`).
    taken       bigint NOT NULL DEFAULT 0,
    -- Selected but left: `malformed_task` messages a reingest cannot send.
    skipped     bigint NOT NULL DEFAULT 0,
    -- Taken, by reason: {"not_json": n, …}.
    by_reason   jsonb NOT NULL DEFAULT '{}',
    not_found   uuid[] NOT NULL DEFAULT '{}',
    error       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Moved with every chunk: a running job not moved for a minute lost its process.
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX invalid_jobs_running ON herald.invalid_jobs (updated_at) WHERE state = 'running';
