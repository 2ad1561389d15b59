-- Frozen SQL of revision 0003_backfill.

-- task_hygiene_log --
-- Every change taskdb makes to a task beyond filling a NULL (and, so that downgrades can undo them,
-- the fills too): which task, what, why, the values before and after, when, and by whom.
CREATE TABLE IF NOT EXISTS task_hygiene_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id uuid NOT NULL,        -- no foreign key: the record outlives the task
    action text NOT NULL,         -- backfill | flag | cancel | ...
    reason text NOT NULL,         -- human-readable: which rule, from which source
    previous jsonb NOT NULL,      -- each changed column's value before (JSON null = was NULL)
    applied jsonb NOT NULL,       -- the same columns' values after
    acted_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor text NOT NULL,          -- 'taskdb revision 0003_backfill', a pg_cron job, a role
    db_role text NOT NULL DEFAULT current_user,
    CONSTRAINT task_hygiene_log_previous_is_object CHECK (jsonb_typeof(previous) = 'object'),
    CONSTRAINT task_hygiene_log_applied_is_object CHECK (jsonb_typeof(applied) = 'object')
);
-- downgrades walk one actor's rows by task
CREATE INDEX IF NOT EXISTS task_hygiene_log_actor_task_id_idx ON task_hygiene_log (actor, task_id);
COMMENT ON TABLE task_hygiene_log IS 'Every value taskdb changed in tasks, with the value before: downgrades restore from it.';

-- taskdb_backfill_progress --
-- The resumable checkpoint of each backfill job: a crashed run resumes after last_id.
CREATE TABLE IF NOT EXISTS taskdb_backfill_progress (
    job text PRIMARY KEY,          -- the revision that runs it
    sweep integer NOT NULL DEFAULT 1,
    mode text NOT NULL DEFAULT 'normal' CHECK (mode IN ('normal', 'final', 'waiting')),
    last_id uuid,                  -- keyset cursor inside the sweep; NULL: the sweep has not started
    rows_done bigint NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz
);

-- taskdb_canonical_status --
-- 'queued', ' Complete ', 'in_progress' -> the canonical spelling; NULL when it is no known status.
CREATE OR REPLACE FUNCTION taskdb_canonical_status(p_status text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE regexp_replace(lower(p_status), '[[:space:]_-]+', '', 'g')
        WHEN 'queued' THEN 'Queued'
        WHEN 'inprogress' THEN 'In Progress'
        WHEN 'complete' THEN 'Complete'
        WHEN 'failed' THEN 'Failed'
        WHEN 'cancelled' THEN 'Cancelled'
        WHEN 'canceled' THEN 'Cancelled'
    END
$$;

-- taskdb_canonical_run_type --
-- ' GPU', 'Cloud ' -> 'cloud'; 'local' -> 'local'; anything else (NULL, '', 'api') -> NULL.
-- 'gpu' is the autoscaler's word for cloud workers; the column never stores it.
CREATE OR REPLACE FUNCTION taskdb_canonical_run_type(p_run_type text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE lower(regexp_replace(p_run_type, '^[[:space:]]+|[[:space:]]+$', '', 'g'))
        WHEN 'cloud' THEN 'cloud'
        WHEN 'gpu' THEN 'cloud'
        WHEN 'local' THEN 'local'
    END
$$;

-- taskdb_try_uuid --
-- A uuid from text, or NULL when the text is not one (legacy params hold anything).
CREATE OR REPLACE FUNCTION taskdb_try_uuid(p_text text) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_text ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
                THEN p_text::uuid END
$$;

-- drop_objects --
-- Downgrade: everything above.
DROP FUNCTION IF EXISTS taskdb_try_uuid(text);
DROP FUNCTION IF EXISTS taskdb_canonical_run_type(text);
DROP FUNCTION IF EXISTS taskdb_canonical_status(text);
DROP TABLE IF EXISTS taskdb_backfill_progress;
DROP TABLE IF EXISTS task_hygiene_log;
