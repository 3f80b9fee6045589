-- Ordered delivery per key (issue 18, docs/ordering.md).
--
-- An endpoint with `ordering` receives the events of one ordering key strictly one
-- after the other, in the order Herald's ordered ingest consumer took them from
-- `<prefix>.ordered` (the publish order: one active consumer reads that queue).
--
-- Added without rewriting a row: a constant default, nullable columns without one.
ALTER TABLE herald.endpoints
    ADD COLUMN ordering boolean NOT NULL DEFAULT false;

-- A delivery of an ordered endpoint's keyed event: its key, its place among the key's
-- deliveries (from herald.ordering_seq, taken in publish order), and `ordering`:
--   in_order      delivered in its key's order (or waiting for its turn)
--   skipped       dead-lettered; its key moved on without it
--   out_of_order  redriven after its key moved on: delivered out of order
-- NULL for every other delivery. Herald writes only these values (no CHECK: one
-- would have every existing row read while the table is locked).
ALTER TABLE herald.deliveries
    ADD COLUMN ordering_key text,
    ADD COLUMN ordering_seq bigint,
    ADD COLUMN ordering text;

CREATE SEQUENCE herald.ordering_seq;

-- The deliveries waiting for their turn, per endpoint and key, in order.
CREATE INDEX deliveries_ordering_waiting
    ON herald.deliveries (endpoint_id, ordering_key, ordering_seq)
    WHERE ordering_key IS NOT NULL AND status = 'pending';

-- The one delivery of each busy (endpoint, key) that may be sent now: its head. A key
-- with nothing in flight or waiting has no row. Every change to a row is made under
-- its row lock (docs/ordering.md explains the protocol).
CREATE TABLE herald.ordering_heads (
    endpoint_id  uuid NOT NULL REFERENCES herald.endpoints (id),
    ordering_key text NOT NULL,
    delivery_id  uuid NOT NULL,
    since        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (endpoint_id, ordering_key)
);
