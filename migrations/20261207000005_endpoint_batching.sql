-- Event batching per endpoint (issue 16): up to batch_max_events of the endpoint's
-- events in one request, gathered for at most batch_window_ms after the first is
-- ready. Both NULL: one event per request, as before. Herald checks them against the
-- configuration at the edge (`delivery.batch_max_events`, `delivery.batch_max_window`)
-- and holds them to it again when they are used;
-- the CHECK keeps the pair whole and in the range any configuration allows. Nullable
-- and without a default, so adding them rewrites no row.
ALTER TABLE herald.endpoints
    ADD COLUMN batch_max_events integer,
    ADD COLUMN batch_window_ms integer,
    -- Each term is true or false, never NULL (a NULL would pass a CHECK).
    ADD CONSTRAINT endpoints_batch_whole CHECK (
        (batch_max_events IS NULL) = (batch_window_ms IS NULL)
        AND (batch_max_events IS NULL OR batch_max_events BETWEEN 2 AND 100)
        AND (batch_window_ms IS NULL OR batch_window_ms > 0));
