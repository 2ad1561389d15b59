-- The offline SQL of taskdb.steps.indexes (`taskdb sql`): {{name}} placeholders are filled when the script
-- is generated (literals already quoted); the DO blocks read the catalog when the script runs.

-- index_check --
-- A CREATE INDEX CONCURRENTLY that failed or was interrupted leaves an INVALID index, which IF NOT EXISTS
-- would keep: stop, and say how to repair it.
DO $taskdb$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = to_regclass({{name_literal}}) AND NOT indisvalid) THEN
        RAISE EXCEPTION 'index % is INVALID (an earlier build was interrupted): run DROP INDEX CONCURRENTLY %; '
            'then rerun this script, which builds it again', {{name_literal}}, {{name_literal}};
    END IF;
END
$taskdb$;

-- index_record --
-- Recorded as taskdb's before the build, so that an INVALID leftover is known to be ours. An index of that
-- name the database already had is adopted as it is.
INSERT INTO taskdb_owned_objects (kind, name, revision)
SELECT 'index', {{owned_name}}, {{revision}} WHERE to_regclass({{name_literal}}) IS NULL
ON CONFLICT (kind, name) DO NOTHING;

-- index_comment --
DO $taskdb$
BEGIN
    IF EXISTS (SELECT 1 FROM taskdb_owned_objects WHERE kind = 'index' AND name = {{owned_name}}) THEN
        COMMENT ON INDEX {{name}} IS {{comment}};
    END IF;
END
$taskdb$;
