-- cachecoord outbox: row changes in Postgres become cache invalidations, without application code.
-- A trigger on each mapped table records the changed row's id here and wakes cachecoord with NOTIFY; cachecoord
-- drains the table (FOR UPDATE SKIP LOCKED, so each row is applied by one replica) and deletes what it applied.
-- Rows written while cachecoord is down wait here and are applied when it starts. Idempotent: safe to re-run.
CREATE SCHEMA IF NOT EXISTS cachecoord;

CREATE TABLE IF NOT EXISTS cachecoord.outbox (
    id         bigserial   PRIMARY KEY,
    table_name text        NOT NULL,
    row_id     text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Records the row's id (column named by the trigger's first argument) for INSERT, UPDATE and DELETE. An UPDATE
-- that changes the id records both the old and the new id.
CREATE OR REPLACE FUNCTION cachecoord.capture() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    old_id text;
    new_id text;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        old_id := to_jsonb(OLD) ->> TG_ARGV[0];
        INSERT INTO cachecoord.outbox (table_name, row_id) VALUES (TG_TABLE_NAME, old_id);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        new_id := to_jsonb(NEW) ->> TG_ARGV[0];
        IF new_id IS DISTINCT FROM old_id THEN
            INSERT INTO cachecoord.outbox (table_name, row_id) VALUES (TG_TABLE_NAME, new_id);
        END IF;
    END IF;
    PERFORM pg_notify('cachecoord_outbox', TG_TABLE_NAME);
    RETURN NULL;
END
$$;
