-- The schema `alembic upgrade head` produces on an empty database, in one readable place.
-- tests/migration/test_up_down.py builds one database from the migrations and one from this file and
-- compares their catalogs: change a revision and this file together, or that test says where they differ.
-- (On an adopted database the application's own tables keep their shape; only taskdb's parts are added.)

-- Tables ---------------------------------------------------------------------------------------------

CREATE TABLE users (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    credits numeric NOT NULL DEFAULT 0          -- the autoscaler counts only work of users who can pay
);

CREATE TABLE projects (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id uuid NOT NULL REFERENCES users (id)  -- the first place a task's missing owner is looked up
);

CREATE TABLE tasks (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    task_type text NOT NULL,
    params jsonb NOT NULL DEFAULT '{}'::jsonb,
    status text NOT NULL DEFAULT 'Queued',       -- or an adopted enum task_status
    attempts integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz,
    error_message text,
    project_id uuid,
    dependant_on uuid,
    worker_id text,
    user_id uuid,                                -- NULL only on a flagged row
    run_type text,                               -- 'cloud' | 'local' on a healthy row
    legacy_reason text                           -- NULL: healthy; else why the row was flagged
);

-- Every value taskdb changed in tasks, with the value before: downgrades restore from it.
CREATE TABLE task_hygiene_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id uuid NOT NULL,
    action text NOT NULL,
    reason text NOT NULL,
    previous jsonb NOT NULL,
    applied jsonb NOT NULL,
    acted_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor text NOT NULL,
    db_role text NOT NULL DEFAULT current_user,
    CONSTRAINT task_hygiene_log_previous_is_object CHECK (jsonb_typeof(previous) = 'object'),
    CONSTRAINT task_hygiene_log_applied_is_object CHECK (jsonb_typeof(applied) = 'object')
);

-- The resumable checkpoint of each backfill job.
CREATE TABLE taskdb_backfill_progress (
    job text PRIMARY KEY,
    sweep integer NOT NULL DEFAULT 1,
    mode text NOT NULL DEFAULT 'normal' CHECK (mode IN ('normal', 'final', 'waiting')),
    last_id uuid,
    rows_done bigint NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz
);

-- Objects taskdb created (not adopted): downgrades drop only these.
CREATE TABLE taskdb_owned_objects (
    seq bigint GENERATED ALWAYS AS IDENTITY,
    kind text NOT NULL,
    name text NOT NULL,
    revision text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, name)
);

-- Constraints & Indices ------------------------------------------------------------------------------

ALTER TABLE tasks ADD CONSTRAINT tasks_status_valid
    CHECK (status::text IN ('Queued', 'In Progress', 'Complete', 'Failed', 'Cancelled'));
COMMENT ON CONSTRAINT tasks_status_valid ON tasks IS
    'The five states workers, the claim and the autoscaler''s count understand.';

ALTER TABLE tasks ADD CONSTRAINT tasks_attempts_nonnegative CHECK (attempts >= 0);
COMMENT ON CONSTRAINT tasks_attempts_nonnegative ON tasks IS
    'attempts counts tries; a negative count is a bug upstream.';

ALTER TABLE tasks ADD CONSTRAINT tasks_legacy_reason_known CHECK (legacy_reason IS NULL OR legacy_reason ~
    '^(missing_user_id|unknown_user|missing_run_type|invalid_run_type|missing_status|invalid_status)(,(missing_user_id|unknown_user|missing_run_type|invalid_run_type|missing_status|invalid_status))*$');
COMMENT ON CONSTRAINT tasks_legacy_reason_known ON tasks IS
    'legacy_reason is a comma-separated list from a documented vocabulary (README).';

-- "run_type IS NOT NULL" matters: NULL IN (...) is NULL, and a CHECK lets NULL through.
ALTER TABLE tasks ADD CONSTRAINT tasks_healthy_has_owner_and_run_type CHECK (legacy_reason IS NOT NULL
    OR (user_id IS NOT NULL AND run_type IS NOT NULL AND run_type IN ('cloud', 'local')));
COMMENT ON CONSTRAINT tasks_healthy_has_owner_and_run_type ON tasks IS
    'A row nobody owns or no worker kind can run must be flagged, never counted as work.';

ALTER TABLE tasks ADD CONSTRAINT tasks_flagged_not_queued CHECK (legacy_reason IS NULL OR status::text <> 'Queued');
COMMENT ON CONSTRAINT tasks_flagged_not_queued ON tasks IS
    'A flagged row is never Queued: the autoscaler must not start workers for it.';

ALTER TABLE tasks ADD CONSTRAINT tasks_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (id);
COMMENT ON CONSTRAINT tasks_user_id_fkey ON tasks IS 'Every task''s owner exists (credits, limits).';

CREATE INDEX tasks_user_id_idx ON tasks (user_id);
COMMENT ON INDEX tasks_user_id_idx IS
    'Per-user counts, and deleting a user without scanning tasks for the foreign key.';

CREATE INDEX task_hygiene_log_task_id_idx ON task_hygiene_log (task_id);
CREATE INDEX task_hygiene_log_actor_task_id_idx ON task_hygiene_log (actor, task_id);

-- Functions ------------------------------------------------------------------------------------------

-- 'queued', ' Complete ', 'in_progress' -> the canonical spelling; NULL when it is no known status.
CREATE FUNCTION taskdb_canonical_status(p_status text) RETURNS text
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

-- ' GPU', 'Cloud ' -> 'cloud'; 'local' -> 'local'; anything else -> NULL.
CREATE FUNCTION taskdb_canonical_run_type(p_run_type text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE lower(regexp_replace(p_run_type, '^[[:space:]]+|[[:space:]]+$', '', 'g'))
        WHEN 'cloud' THEN 'cloud'
        WHEN 'gpu' THEN 'cloud'
        WHEN 'local' THEN 'local'
    END
$$;

-- A uuid from text, or NULL when the text is not one.
CREATE FUNCTION taskdb_try_uuid(p_text text) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_text ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
                THEN p_text::uuid END
$$;
