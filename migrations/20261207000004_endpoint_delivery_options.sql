-- Per-endpoint delivery options (issue 16): a request timeout and a retry schedule of
-- the endpoint's own, in milliseconds. NULL: the deployment's `delivery.timeout` and
-- `delivery.retry_schedule`. Herald checks them against the configuration at the edge
-- (`delivery.max_timeout`; every step one of the delays the topology declares) and
-- again when they are used. Nullable and without a default, so adding them rewrites
-- no row. An empty schedule is allowed: no retry, the first failure dead-letters.
ALTER TABLE herald.endpoints
    ADD COLUMN timeout_ms integer CHECK (timeout_ms IS NULL OR timeout_ms > 0),
    ADD COLUMN retry_schedule_ms integer[] CHECK (
        retry_schedule_ms IS NULL
        OR (cardinality(retry_schedule_ms) <= 100
            AND array_position(retry_schedule_ms, NULL) IS NULL
            AND 0 < ALL (retry_schedule_ms)));
