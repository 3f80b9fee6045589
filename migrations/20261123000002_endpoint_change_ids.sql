-- Endpoint change notifications carry the endpoint id, so subscription caches reload
-- just that endpoint instead of every endpoint (statement-level TRUNCATE still sends
-- an empty payload: reload everything).
CREATE OR REPLACE FUNCTION herald.notify_endpoint_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('herald_endpoints', OLD.id::text);
    ELSE
        PERFORM pg_notify('herald_endpoints', NEW.id::text);
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER endpoints_changed ON herald.endpoints;

CREATE TRIGGER endpoint_changed
    AFTER INSERT OR UPDATE OR DELETE ON herald.endpoints
    FOR EACH ROW EXECUTE FUNCTION herald.notify_endpoint_changed();

CREATE TRIGGER endpoints_truncated
    AFTER TRUNCATE ON herald.endpoints
    FOR EACH STATEMENT EXECUTE FUNCTION herald.notify_endpoints_changed();
