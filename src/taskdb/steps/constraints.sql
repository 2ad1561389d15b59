-- The offline SQL of taskdb.steps.constraints (`taskdb sql`): {{name}} placeholders are filled when the script
-- is generated (literals already quoted); the DO blocks read the catalog when the script runs.

-- add_constraint --
-- NOT VALID: no scan, a brief lock; from now on every insert and update must satisfy it. A constraint of
-- that name that already exists is adopted as it is (and not recorded as taskdb's).
DO $taskdb$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = {{table_literal}}::regclass AND conname = {{name_literal}}){{also}} THEN
        {{add_sql}};
        {{comment_sql}};
        {{record_owned}};
    END IF;
END
$taskdb$;

-- not_null_validate --
-- The temporary CHECK (col IS NOT NULL): validated, or dropped with a warning when rows hold NULL (taskdb
-- invents no values: the column stays nullable).
DO $taskdb$
DECLARE
    v_nulls bigint;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = {{table_literal}}::regclass AND attname = {{column_literal}}
               AND NOT attnotnull)
       AND EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = {{table_literal}}::regclass
                   AND conname = {{name_literal}} AND NOT convalidated) THEN
        BEGIN
            ALTER TABLE {{table}} VALIDATE CONSTRAINT {{name}};
        EXCEPTION WHEN check_violation THEN
            SELECT count(*) INTO v_nulls FROM {{table}} WHERE {{column}} IS NULL;
            ALTER TABLE {{table}} DROP CONSTRAINT IF EXISTS {{name}};
            RAISE WARNING '%.% stays nullable: % rows hold NULL and taskdb invents no values',
                {{table_literal}}, {{column_literal}}, v_nulls;
        END;
    END IF;
END
$taskdb$;

-- not_null_set --
-- With the CHECK validated, SET NOT NULL needs no scan (PostgreSQL 12+); then the CHECK goes.
DO $taskdb$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = {{table_literal}}::regclass AND attname = {{column_literal}}
               AND NOT attnotnull)
       AND EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = {{table_literal}}::regclass
                   AND conname = {{name_literal}} AND convalidated) THEN
        ALTER TABLE {{table}} ALTER COLUMN {{column}} SET NOT NULL;
        ALTER TABLE {{table}} DROP CONSTRAINT {{name}};
        {{record_owned}};
    END IF;
END
$taskdb$;
