-- The offline SQL of taskdb.steps.tables (`taskdb sql`): {{name}} placeholders are filled when the script
-- is generated (literals already quoted); the DO blocks read the catalog when the script runs.

-- check_shapes --
-- Each existing table must have the columns taskdb relies on, of an accepted type, and a unique key; else
-- stop before anything changes, with the online upgrade's message (taskdb.adopt.check_shape).
DO $taskdb$
DECLARE
    -- [{table, unique_key, columns: [{name, required, types: [...]}]}], from the revision
    v_specs CONSTANT jsonb := {{specs}};
    v_spec jsonb;
    v_col jsonb;
    v_type text;
    v_is_enum boolean;
BEGIN
    FOR v_spec IN SELECT s FROM jsonb_array_elements(v_specs) AS s LOOP
        CONTINUE WHEN to_regclass(v_spec ->> 'table') IS NULL;  -- absent: created below
        FOR v_col IN SELECT c FROM jsonb_array_elements(v_spec -> 'columns') AS c LOOP
            v_type := NULL;
            SELECT format_type(a.atttypid, a.atttypmod), t.typtype = 'e' INTO v_type, v_is_enum
            FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
            WHERE a.attrelid = to_regclass(v_spec ->> 'table') AND a.attname = v_col ->> 'name'
              AND a.attnum > 0 AND NOT a.attisdropped;
            IF v_type IS NULL THEN
                CONTINUE WHEN NOT (v_col ->> 'required')::boolean;
                RAISE EXCEPTION 'table %, column %: missing (taskdb needs it); nothing was changed',
                    quote_literal(v_spec ->> 'table'), quote_literal(v_col ->> 'name');
            END IF;
            IF NOT (v_col -> 'types' ? btrim(split_part(v_type, '(', 1)) OR (v_is_enum AND v_col -> 'types' ? '<enum>'))
            THEN
                RAISE EXCEPTION 'table %, column %: has type %, taskdb needs one of %; nothing was changed',
                    quote_literal(v_spec ->> 'table'), quote_literal(v_col ->> 'name'), v_type,
                    (SELECT string_agg(x, ', ') FROM jsonb_array_elements_text(v_col -> 'types') AS x);
            END IF;
        END LOOP;
        IF NOT EXISTS (
            SELECT 1 FROM pg_index i
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
            WHERE i.indrelid = to_regclass(v_spec ->> 'table') AND i.indisunique AND i.indisvalid
              AND i.indnatts = 1 AND i.indpred IS NULL AND a.attname = v_spec ->> 'unique_key')
        THEN
            RAISE EXCEPTION 'table %, column %: is not a primary key or unique (batches are keyed on it); '
                'nothing was changed', quote_literal(v_spec ->> 'table'), quote_literal(v_spec ->> 'unique_key');
        END IF;
    END LOOP;
END
$taskdb$;

-- create_table --
-- Created only where absent (an existing table is adopted as it is), and recorded as taskdb's.
DO $taskdb$
BEGIN
    IF to_regclass({{table_literal}}) IS NULL THEN
        {{create_sql}};
        {{record_owned}};
    END IF;
END
$taskdb$;
