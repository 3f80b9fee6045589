-- Tenant API tokens (contract §7, §8). A token is shown once, when it is created;
-- only its SHA-256 is kept. Tokens are 256-bit random strings, so a fast hash is
-- enough: nothing can be guessed from it. A revoked token stays on record.
CREATE TABLE herald.api_tokens (
    id          uuid PRIMARY KEY,
    tenant_id   text NOT NULL CHECK (tenant_id <> ''),
    name        text,
    token_hash  bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_tokens_tenant ON herald.api_tokens (tenant_id, id);

-- Endpoints get a name (the ERP's endpoints table has one).
ALTER TABLE herald.endpoints ADD COLUMN name text;

-- Keyset pagination of the admin API's endpoint list: newest first by id (UUIDv7, so
-- time order) within one tenant. Deliveries and events page on indexes they already
-- have (primary key, received_at): no new index to write on the hot path.
CREATE INDEX endpoints_tenant_id ON herald.endpoints (tenant_id, id DESC) WHERE deleted_at IS NULL;
