-- Static headers sent with every request of an endpoint: an object of lowercase name →
-- value. The values are secrets: write-only through the API, never logged.
ALTER TABLE herald.endpoints
    ADD COLUMN headers jsonb NOT NULL DEFAULT '{}'::jsonb
    CHECK (jsonb_typeof(headers) = 'object');
