-- The offline SQL of taskdb.steps.columns (`taskdb sql`): {{name}} placeholders are filled when the script
-- is generated (literals already quoted); the DO blocks read the catalog when the script runs.

-- add_column --
-- Nullable and without a default: a catalog-only change. Recorded so that a downgrade drops only these.
DO $taskdb$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = {{table_literal}}::regclass
                   AND attname = {{column_literal}} AND attnum > 0 AND NOT attisdropped) THEN
        ALTER TABLE {{table}} ADD COLUMN {{column}} {{type}};
        {{record_owned}};
    END IF;
END
$taskdb$;

-- enum_labels --
-- Only where tasks.status is an enum: the canonical labels it lacks (PostgreSQL cannot drop enum labels).
DO $taskdb$
DECLARE
    v_type text;
    v_label text;
BEGIN
    SELECT format_type(a.atttypid, a.atttypmod) INTO v_type
    FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
    WHERE a.attrelid = 'tasks'::regclass AND a.attname = 'status' AND NOT a.attisdropped AND t.typtype = 'e';
    IF v_type IS NULL THEN
        RETURN;  -- status is text
    END IF;
    FOREACH v_label IN ARRAY {{labels}} LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_enum WHERE enumtypid = to_regtype(v_type) AND enumlabel = v_label);
        EXECUTE format('ALTER TYPE %s ADD VALUE IF NOT EXISTS %L', v_type, v_label);
        INSERT INTO taskdb_owned_objects (kind, name, revision) VALUES ('enum_label', v_type || '.' || v_label, {{revision}})
        ON CONFLICT (kind, name) DO NOTHING;
    END LOOP;
END
$taskdb$;
