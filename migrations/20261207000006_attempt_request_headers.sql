-- The request headers of each attempt (issue 14), as Herald sent them with the secrets
-- taken out: a JSON object of lowercase name → value, static header values and
-- signatures redacted (src/delivery/sent_headers.rs). Nullable and without a default,
-- so adding it rewrites no row; attempts recorded before it show NULL.
ALTER TABLE herald.delivery_attempts ADD COLUMN request_headers jsonb;
