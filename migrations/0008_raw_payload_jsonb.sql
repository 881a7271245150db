-- tgingest schema, version 8: the jsonb of a raw payload, computed when asked, for consumers that
-- store the exact bytes only (CONSUMER_STORE_JSONB=false leaves raw_updates.payload NULL; the
-- jsonb copy costs PostgreSQL CPU and storage on every update). Additive only (see 0001's header):
-- one function.
--
-- raw_payload_jsonb(payload_bytes) is the payload as jsonb, or NULL — never an error — for the
-- payloads PostgreSQL's jsonb refuses and raw_updates keeps as bytes (DESIGN.md §4): a \u0000
-- escape (22P05), a lone surrogate escape (22P02), bytes that are not UTF-8 (22021). Queries that
-- read a payload's JSON use it whatever the setting:
--   SELECT coalesce(payload, raw_payload_jsonb(payload_bytes)) -> 'message' ->> 'text'
--     FROM raw_updates WHERE …;
-- It parses on every call (a subtransaction each, for the exception handler): fine for lookups
-- and reports, not for scanning millions of rows in a hot path.
CREATE FUNCTION raw_payload_jsonb(payload_bytes bytea) RETURNS jsonb
    LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE
AS $$
BEGIN
    RETURN convert_from(payload_bytes, 'UTF8')::jsonb;
EXCEPTION
    WHEN untranslatable_character OR invalid_text_representation
        OR character_not_in_repertoire THEN
        RETURN NULL;
END
$$;
