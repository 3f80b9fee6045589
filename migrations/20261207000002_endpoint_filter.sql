-- Payload filters (issue 16, docs/filters.md): a condition on an event's content that an
-- endpoint carries besides its type patterns, as the JSON document it was written in
-- (compiled and checked by Herald at the edge and again when loaded). NULL: every event
-- of its types. Nullable and without a default, so adding it rewrites no row.
ALTER TABLE herald.endpoints
    ADD COLUMN filter jsonb
    CHECK (filter IS NULL OR jsonb_typeof(filter) = 'object');
