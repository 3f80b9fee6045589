-- The signature scheme of each endpoint (contract §6): `standard` (Standard Webhooks),
-- `legacy` (the ERP's previous service: X-Signature / X-Event) or `both`. A `legacy`
-- endpoint's secret may be any 8–256 printable ASCII characters; the others' are whsec_.
ALTER TABLE herald.endpoints
    ADD COLUMN signature text NOT NULL DEFAULT 'standard'
    CHECK (signature IN ('standard', 'legacy', 'both'));
