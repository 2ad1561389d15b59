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
COMMENT ON TABLE task_hygiene_log IS
    'Every value taskdb changed in tasks, with the value before: downgrades restore from it.';

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
COMMENT ON TABLE taskdb_owned_objects IS 'Objects taskdb created (not adopted): downgrades drop only these.';

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
COMMENT ON INDEX task_hygiene_log_task_id_idx IS
    'What taskdb changed in one task, and when (SELECT ... FROM task_hygiene_log WHERE task_id = ...).';
CREATE INDEX task_hygiene_log_actor_task_id_idx ON task_hygiene_log (actor, task_id);
-- 0007: queue_health's cancelled_last_24h reads only the last day's cancellations
CREATE INDEX task_hygiene_log_cancelled_at_idx ON task_hygiene_log (acted_at) WHERE action = 'cancel';
COMMENT ON INDEX task_hygiene_log_cancelled_at_idx IS
    'queue_health counts the last day''s cancellations without reading the whole log.';

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

-- Queue hygiene (revision 0005) ---------------------------------------------------------------------

-- One row that DBAs tune with UPDATE; every function and view below reads it, none hard-codes a number.
CREATE TABLE task_hygiene_settings (
    singleton boolean PRIMARY KEY DEFAULT true
        CONSTRAINT task_hygiene_settings_one_row CHECK (singleton),
    queued_ttl interval NOT NULL DEFAULT interval '7 days'
        CONSTRAINT task_hygiene_settings_queued_ttl_positive CHECK (queued_ttl > interval '0'),
    stale_after interval NOT NULL DEFAULT interval '24 hours'
        CONSTRAINT task_hygiene_settings_stale_after_positive CHECK (stale_after > interval '0'),
    user_concurrency_limit integer NOT NULL DEFAULT 5
        CONSTRAINT task_hygiene_settings_limit_at_least_one CHECK (user_concurrency_limit >= 1),
    cleanup_batch_size integer NOT NULL DEFAULT 10000
        CONSTRAINT task_hygiene_settings_batch_at_least_one CHECK (cleanup_batch_size >= 1),
    cleanup_schedule text NOT NULL DEFAULT '15 3 * * *'  -- cron syntax, UTC: daily at 03:15
        CONSTRAINT task_hygiene_settings_schedule_not_blank CHECK (btrim(cleanup_schedule) <> '')
);
INSERT INTO task_hygiene_settings DEFAULT VALUES ON CONFLICT DO NOTHING;
COMMENT ON TABLE task_hygiene_settings IS 'taskdb queue hygiene: one row; tune with UPDATE.';

-- One row per call of cancel_stale_queued_tasks: when, by whom, how many it cancelled.
CREATE TABLE task_hygiene_runs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    actor text NOT NULL,
    max_age interval NOT NULL,
    batch_size integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    cancelled integer
);

-- The run type a caller asked for: 'gpu' is the autoscaler's word for 'cloud'; anything else unknown
-- is an error naming the allowed values (a typo must not silently count zero).
CREATE FUNCTION taskdb_run_type_arg(p_run_type text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF @schema@.taskdb_canonical_run_type(p_run_type) IS NULL THEN  -- callable from any search_path
        RAISE EXCEPTION 'unknown run type %: expected ''cloud'' (alias ''gpu'') or ''local''', quote_nullable(p_run_type)
            USING ERRCODE = '22023';
    END IF;
    RETURN @schema@.taskdb_canonical_run_type(p_run_type);
END
$$;

-- THE definition of ready work, used by both claimable_task_count and claim_next_task: Queued, not
-- flagged, younger than queued_ttl, its dependency (if any) Complete, its user has credits.
-- (The per-user concurrency limit is applied on top, by the count and the claim alike.)
CREATE VIEW taskdb_ready_tasks AS
SELECT t.id, t.user_id, t.run_type, t.created_at
FROM tasks t
WHERE t.status = 'Queued'
  AND t.legacy_reason IS NULL
  AND t.created_at > now() - (SELECT s.queued_ttl FROM task_hygiene_settings s)
  AND (t.dependant_on IS NULL
       OR EXISTS (SELECT 1 FROM tasks d WHERE d.id = t.dependant_on AND d.status = 'Complete'))
  AND EXISTS (SELECT 1 FROM users u WHERE u.id = t.user_id AND u.credits > 0);

-- What the autoscaler calls: how many tasks of this run type workers could claim right now.
-- Per user: min(limit - the user's In Progress tasks of any run type, ready tasks); with
-- p_include_active: min(limit, the user's In Progress tasks of this run type + ready tasks).
CREATE FUNCTION claimable_task_count(p_run_type text DEFAULT 'cloud', p_include_active boolean DEFAULT false)
RETURNS integer
LANGUAGE sql STABLE
SECURITY DEFINER SET search_path = pg_catalog, @schema@, pg_temp AS $$
    WITH wanted AS (SELECT taskdb_run_type_arg(p_run_type) AS run_type,
                           (SELECT user_concurrency_limit FROM task_hygiene_settings) AS lim),
    ready AS (
        SELECT r.user_id, count(*) AS n
        FROM taskdb_ready_tasks r, wanted w
        WHERE r.run_type = w.run_type
        GROUP BY r.user_id
    ),
    active AS (
        SELECT t.user_id, count(*) AS any_run_type, count(*) FILTER (WHERE t.run_type = w.run_type) AS this_run_type
        FROM tasks t, wanted w
        WHERE t.status = 'In Progress' AND t.user_id IS NOT NULL
        GROUP BY t.user_id
    )
    SELECT coalesce(sum(
               CASE WHEN p_include_active
                    THEN least(w.lim, coalesce(a.this_run_type, 0) + coalesce(r.n, 0))
                    ELSE greatest(0, least(w.lim - coalesce(a.any_run_type, 0), coalesce(r.n, 0))) END
           ), 0)::integer
    FROM ready r
    FULL JOIN active a ON a.user_id = r.user_id
    CROSS JOIN wanted w
    WHERE p_include_active OR r.user_id IS NOT NULL
$$;

-- Claims the oldest ready task of a user below the limit: In Progress, worker_id, updated_at.
-- Rows are taken FOR UPDATE SKIP LOCKED (claimers never wait on each other's rows); a transaction-
-- scoped advisory lock per user serialises the limit check, so concurrent claims cannot push a user
-- over it. Returns the claimed row, or no row.
CREATE FUNCTION claim_next_task(p_worker_id text, p_run_type text DEFAULT 'cloud')
RETURNS SETOF tasks
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, @schema@, pg_temp AS $$
DECLARE
    v_run_type text := taskdb_run_type_arg(p_run_type);
    v_limit integer := (SELECT user_concurrency_limit FROM task_hygiene_settings);
    v_candidate record;
    v_holding boolean := false;
    v_claimed tasks;
BEGIN
    IF nullif(btrim(p_worker_id), '') IS NULL THEN
        RAISE EXCEPTION 'claim_next_task: p_worker_id must name the worker' USING ERRCODE = '22023';
    END IF;
    -- Ready tasks oldest first, straight off the partial index on Queued rows; the loop's cursor fetches
    -- lazily, so a claim usually reads a handful of rows whatever the queue's length.
    FOR v_candidate IN
        SELECT r.id, r.user_id
        FROM taskdb_ready_tasks r
        WHERE r.run_type = v_run_type
          AND (SELECT count(*) FROM tasks a WHERE a.user_id = r.user_id AND a.status = 'In Progress') < v_limit
        ORDER BY r.created_at, r.id
    LOOP
        -- 0x7461736B ('task') namespaces the key; the user id's hash picks the lock. Wait only while
        -- holding no other user's lock (no deadlock between claimers): after that, a user another claimer
        -- holds is skipped; that claimer is either claiming for them or found them at the limit.
        IF NOT v_holding THEN
            PERFORM pg_advisory_xact_lock(1952543595, hashtext(v_candidate.user_id::text));
            v_holding := true;
        ELSIF NOT pg_try_advisory_xact_lock(1952543595, hashtext(v_candidate.user_id::text)) THEN
            CONTINUE;
        END IF;
        -- recount under the lock: a claim for this user committed meanwhile is visible now
        CONTINUE WHEN (SELECT count(*) FROM tasks a
                       WHERE a.user_id = v_candidate.user_id AND a.status = 'In Progress') >= v_limit;
        UPDATE tasks t
        SET status = 'In Progress', worker_id = p_worker_id, updated_at = now()
        WHERE t.id = (SELECT r.id FROM taskdb_ready_tasks r WHERE r.id = v_candidate.id FOR UPDATE SKIP LOCKED)
        RETURNING t.* INTO v_claimed;
        IF FOUND THEN
            RETURN NEXT v_claimed;
            RETURN;
        END IF;
    END LOOP;
    RETURN;
END
$$;

-- Cancels up to one batch of Queued tasks created more than p_max_age ago (settings when NULL),
-- oldest first, SKIP LOCKED; each gets an error_message saying why and when, and a task_hygiene_log
-- row; the call is recorded in task_hygiene_runs. Returns how many it cancelled. One batch per call
-- keeps every transaction's row locks few and short: callers loop until it returns 0
-- (taskdb_cancel_stale_queued_all does, committing between batches). The actor recorded is the
-- session's taskdb.actor setting, else the session's role.
CREATE FUNCTION cancel_stale_queued_tasks(p_max_age interval DEFAULT NULL, p_batch_size integer DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, @schema@, pg_temp AS $$
DECLARE
    v_max_age interval := coalesce(p_max_age, (SELECT queued_ttl FROM task_hygiene_settings));
    v_batch integer := coalesce(p_batch_size, (SELECT cleanup_batch_size FROM task_hygiene_settings));
    -- session_user: inside SECURITY DEFINER current_user is the owner, not the caller
    v_actor text := coalesce(nullif(current_setting('taskdb.actor', true), ''), 'role ' || session_user);
    v_run bigint;
    v_count integer;
BEGIN
    IF v_max_age <= interval '0' THEN
        RAISE EXCEPTION 'cancel_stale_queued_tasks: p_max_age must be positive, not %', v_max_age USING ERRCODE = '22023';
    END IF;
    IF v_batch < 1 THEN
        RAISE EXCEPTION 'cancel_stale_queued_tasks: p_batch_size must be >= 1, not %', v_batch USING ERRCODE = '22023';
    END IF;
    INSERT INTO task_hygiene_runs (actor, max_age, batch_size) VALUES (v_actor, v_max_age, v_batch)
    RETURNING id INTO v_run;

    WITH batch AS (
        SELECT t.id, t.status::text AS old_status, t.error_message AS old_error_message,
               t.updated_at AS old_updated_at, t.created_at
        FROM tasks t
        WHERE t.status = 'Queued' AND t.created_at < now() - v_max_age
        ORDER BY t.created_at, t.id
        LIMIT v_batch
        FOR NO KEY UPDATE SKIP LOCKED
    ),
    cancelled AS (
        UPDATE tasks t
        SET status = 'Cancelled',
            updated_at = now(),
            error_message = 'Cancelled by taskdb cleanup (' || v_actor || ') at ' || now()
                            || ': Queued since ' || b.created_at || ', longer than ' || v_max_age
        FROM batch b
        WHERE t.id = b.id
        RETURNING t.id, b.old_status, b.old_error_message, b.old_updated_at, t.error_message, t.updated_at
    ),
    logged AS (
        INSERT INTO task_hygiene_log (task_id, action, reason, previous, applied, actor)
        SELECT c.id, 'cancel', 'stale: Queued longer than ' || v_max_age,
               jsonb_build_object('status', c.old_status, 'error_message', c.old_error_message,
                                  'updated_at', c.old_updated_at),
               jsonb_build_object('status', 'Cancelled', 'error_message', c.error_message,
                                  'updated_at', c.updated_at),
               v_actor
        FROM cancelled c
    )
    SELECT count(*) INTO v_count FROM cancelled;

    UPDATE task_hygiene_runs SET finished_at = clock_timestamp(), cancelled = v_count WHERE id = v_run;
    RETURN v_count;
END
$$;

-- What the pg_cron job and `taskdb cleanup` run: batches until none is left, committing after each.
-- (SECURITY INVOKER: a SECURITY DEFINER procedure may not COMMIT; the function it calls is the definer.)
CREATE PROCEDURE taskdb_cancel_stale_queued_all(p_actor text DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    v_batch integer;
BEGIN
    IF p_actor IS NOT NULL THEN
        PERFORM set_config('taskdb.actor', p_actor, false);
    END IF;
    LOOP
        v_batch := @schema@.cancel_stale_queued_tasks();  -- the caller's search_path may not reach it
        COMMIT;
        EXIT WHEN v_batch = 0;
    END LOOP;
    IF p_actor IS NOT NULL THEN
        PERFORM set_config('taskdb.actor', '', false);
    END IF;
END
$$;

-- Queued tasks older than stale_after (what an operator should look at), and when cleanup cancels them.
CREATE VIEW stale_queued_tasks AS
SELECT t.id, t.task_type, t.user_id, t.run_type, t.created_at,
       -- NULL for a created_at of +-infinity: PostgreSQL 15 raises "cannot subtract infinite timestamps",
       -- which would fail the whole view for one legacy row (17 returns an infinite interval)
       CASE WHEN isfinite(t.created_at) THEN now() - t.created_at END AS age,
       t.attempts, t.legacy_reason,
       t.created_at + (SELECT s.queued_ttl FROM task_hygiene_settings s) AS cancel_due_at
FROM tasks t
WHERE t.status = 'Queued'
  AND t.created_at < now() - (SELECT s.stale_after FROM task_hygiene_settings s);  -- computed once

-- What taskdb scheduled with pg_cron, one row per job (revision 0006). cron.job lives in
-- cron.database_name, which may be another database: this record is how the target database knows about
-- its job, and where a downgrade finds it.
CREATE TABLE taskdb_cron_jobs (
    job text PRIMARY KEY,                 -- taskdb's name: taskdb_cancel_stale_queued, taskdb_purge_cron_history
    jobname text NOT NULL,                -- cron.job.jobname (name:database when another database had the name)
    jobid bigint NOT NULL,                -- cron.job.jobid, in cron_database
    cron_database text NOT NULL,          -- the database whose cron.job holds it (cron.database_name)
    run_database text NOT NULL,           -- the database the command runs in (cron.job.database)
    schedule text NOT NULL,               -- as given to pg_cron (cron syntax, UTC; or 'N seconds' on 1.5+)
    command text NOT NULL,
    installed_at timestamptz NOT NULL DEFAULT now()  -- when taskdb last scheduled or changed it
);
COMMENT ON TABLE taskdb_cron_jobs IS 'pg_cron jobs taskdb scheduled (cron.job may be in another database).';

-- Whether the cleanup's pg_cron job is installed and active. Where cron.job is in this database it is the
-- truth; where the job lives in another database, installed comes from taskdb_cron_jobs and active is NULL
-- (unknown; queue_health.cleanup_lag shows whether it runs). SECURITY DEFINER: cron.job has row-level
-- security (each role sees its own jobs), so a monitoring role would not see the job the migrating role made.
CREATE FUNCTION taskdb_cron_job_state(OUT installed boolean, OUT active boolean)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, @schema@, pg_temp
AS $$
DECLARE
    v_job record;
BEGIN
    SELECT r.jobname, r.cron_database INTO v_job
    FROM taskdb_cron_jobs r WHERE r.job = 'taskdb_cancel_stale_queued';
    IF FOUND AND v_job.cron_database <> current_database() THEN
        installed := true;
        active := NULL;
        RETURN;
    END IF;
    IF to_regclass('cron.job') IS NULL THEN
        installed := false;
        active := false;
        RETURN;
    END IF;
    EXECUTE 'SELECT count(*) > 0, coalesce(bool_or(j.active), false) FROM cron.job j '
            'WHERE j.jobname = $1 AND j.database = current_database()'
    INTO installed, active
    USING coalesce(v_job.jobname, 'taskdb_cancel_stale_queued');
END
$$;

-- One row: the queue at a glance, for dashboards and `taskdb doctor`.
CREATE VIEW queue_health AS
SELECT
    (SELECT count(*) FROM tasks WHERE status = 'Queued') AS queued_total,
    (SELECT count(*) FROM taskdb_ready_tasks WHERE run_type = 'cloud') AS ready_cloud,
    (SELECT count(*) FROM taskdb_ready_tasks WHERE run_type = 'local') AS ready_local,
    claimable_task_count('cloud') AS claimable_cloud,
    claimable_task_count('local') AS claimable_local,
    (SELECT count(*) FROM stale_queued_tasks) AS stale_count,
    q.oldest_queued_at,
    -- NULL when the oldest Queued task was created at +-infinity (as age in stale_queued_tasks): on
    -- PostgreSQL 15 one legacy row with created_at 'infinity' would otherwise fail this view, and so `taskdb doctor`
    CASE WHEN isfinite(q.oldest_queued_at) THEN now() - q.oldest_queued_at END AS oldest_queued_age,
    (SELECT count(*) FROM tasks WHERE legacy_reason IS NOT NULL) AS flagged_count,
    (SELECT count(*) FROM task_hygiene_log WHERE action = 'cancel' AND acted_at > now() - interval '24 hours')
        AS cancelled_last_24h,
    r.last_cleanup_at,
    now() - r.last_cleanup_at AS cleanup_lag,
    c.installed AS cron_job_installed,
    c.active AS cron_job_active,
    (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'tasks'::regclass) AS dead_tuples
FROM (SELECT min(created_at) AS oldest_queued_at FROM tasks WHERE status = 'Queued') q
CROSS JOIN (SELECT max(finished_at) AS last_cleanup_at FROM task_hygiene_runs) r
CROSS JOIN taskdb_cron_job_state() c;

-- When tasks become Failed or Cancelled, their Queued descendants (by dependant_on or
-- params.orchestrator_task_id_ref, transitively) can never run: cancel them with a reason, and log each.
-- A statement-level trigger with transition tables: one recursive query per UPDATE statement, however
-- many rows it ended (a cleanup batch of 10,000 is one query, not 10,000). UNION stops at cycles; the
-- trigger's own UPDATE does not cascade again (taskdb.cascading), so deep chains cost no recursion.
-- jit = off: the recursive query's cost estimate would otherwise JIT-compile on every statement.
CREATE FUNCTION taskdb_cancel_children() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, @schema@, pg_temp SET jit = off AS $$
DECLARE
    -- whoever ended the parents: a revision or pg_cron job (taskdb.actor), else the session's role
    v_actor text := coalesce(nullif(current_setting('taskdb.actor', true), ''), 'role ' || session_user);
BEGIN
    IF current_setting('taskdb.cascading', true) = 'on' THEN
        RETURN NULL;
    END IF;
    PERFORM set_config('taskdb.cascading', 'on', true);
    WITH RECURSIVE ended AS (
        SELECT n.id, n.status::text AS status
        FROM taskdb_new_rows n JOIN taskdb_old_rows o ON o.id = n.id
        WHERE n.status::text IN ('Failed', 'Cancelled') AND o.status IS DISTINCT FROM n.status
    ),
    doomed(id, root, root_status) AS (
        SELECT c.id, e.id, e.status FROM ended e
        CROSS JOIN LATERAL (
            SELECT x.id FROM tasks x WHERE x.status = 'Queued' AND x.dependant_on = e.id
            UNION ALL
            SELECT x.id FROM tasks x
            WHERE x.status = 'Queued' AND taskdb_try_uuid(x.params ->> 'orchestrator_task_id_ref') = e.id
        ) c
        UNION
        SELECT c.id, d.root, d.root_status FROM doomed d
        CROSS JOIN LATERAL (
            SELECT x.id FROM tasks x WHERE x.status = 'Queued' AND x.dependant_on = d.id
            UNION ALL
            SELECT x.id FROM tasks x
            WHERE x.status = 'Queued' AND taskdb_try_uuid(x.params ->> 'orchestrator_task_id_ref') = d.id
        ) c
    ),
    first_root AS (  -- a task two ended parents reach is cancelled (and logged) once
        SELECT DISTINCT ON (d.id) d.id, d.root, d.root_status FROM doomed d ORDER BY d.id, d.root
    ),
    locked AS (
        SELECT t.id, f.root, f.root_status, t.status::text AS old_status,
               t.error_message AS old_error_message, t.updated_at AS old_updated_at
        FROM tasks t JOIN first_root f ON f.id = t.id
        WHERE t.status = 'Queued'
        FOR NO KEY UPDATE OF t SKIP LOCKED   -- a child a worker is claiming right now is left to the worker
    ),
    cancelled AS (
        UPDATE tasks t
        SET status = 'Cancelled', updated_at = now(),
            error_message = 'Cancelled by taskdb: its parent task ' || l.root || ' became ' || l.root_status
        FROM locked l
        WHERE t.id = l.id
        RETURNING t.id, l.root, l.root_status, l.old_status, l.old_error_message, l.old_updated_at,
                  t.error_message, t.updated_at
    )
    INSERT INTO task_hygiene_log (task_id, action, reason, previous, applied, actor)
    SELECT c.id, 'cancel', 'trigger tasks_cancel_children: parent ' || c.root || ' became ' || c.root_status,
           jsonb_build_object('status', c.old_status, 'error_message', c.old_error_message,
                              'updated_at', c.old_updated_at),
           jsonb_build_object('status', 'Cancelled', 'error_message', c.error_message, 'updated_at', c.updated_at),
           v_actor
    FROM cancelled c;
    PERFORM set_config('taskdb.cascading', '', true);
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_cancel_children
AFTER UPDATE ON tasks
REFERENCING OLD TABLE AS taskdb_old_rows NEW TABLE AS taskdb_new_rows
FOR EACH STATEMENT
EXECUTE FUNCTION taskdb_cancel_children();
CREATE INDEX tasks_queued_run_type_created_at_idx ON tasks (run_type, created_at) WHERE status = 'Queued';
COMMENT ON INDEX tasks_queued_run_type_created_at_idx IS
    'Ready work, the count, the claim and the stale scan read only Queued rows: a small index.';
CREATE INDEX tasks_in_progress_user_id_idx ON tasks (user_id) WHERE status = 'In Progress';
COMMENT ON INDEX tasks_in_progress_user_id_idx IS 'The per-user concurrency limit counts In Progress rows per user.';
CREATE INDEX tasks_flagged_idx ON tasks (legacy_reason) WHERE legacy_reason IS NOT NULL;
COMMENT ON INDEX tasks_flagged_idx IS 'queue_health and doctor count flagged rows without scanning the table.';
CREATE INDEX tasks_queued_dependant_on_idx ON tasks (dependant_on) WHERE status = 'Queued';
COMMENT ON INDEX tasks_queued_dependant_on_idx IS 'tasks_cancel_children finds the Queued dependants of a failed task.';
CREATE INDEX tasks_queued_orchestrator_ref_idx ON tasks (taskdb_try_uuid(params ->> 'orchestrator_task_id_ref'))
    WHERE status = 'Queued';
COMMENT ON INDEX tasks_queued_orchestrator_ref_idx IS
    'tasks_cancel_children finds the Queued children of a failed orchestrator task.';

-- Privileges ---------------------------------------------------------------------------------------

-- Least privilege: only the owner and the NOLOGIN group roles the README names may call the SECURITY
-- DEFINER functions or read the health views; grant the roles to your login roles. Roles are cluster-wide,
-- so these statements need them to exist: the migrations create them where the migrating role may.
-- (Where the queue's schema is not public, the migrations also grant the roles USAGE on it.)
REVOKE EXECUTE ON FUNCTION claimable_task_count(text, boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION claim_next_task(text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION cancel_stale_queued_tasks(interval, integer) FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE taskdb_cancel_stale_queued_all(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION taskdb_cron_job_state() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION taskdb_cancel_children() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION claimable_task_count(text, boolean) TO taskdb_autoscaler, taskdb_monitor;
GRANT EXECUTE ON FUNCTION claim_next_task(text, text) TO taskdb_worker;
GRANT EXECUTE ON FUNCTION taskdb_cron_job_state() TO taskdb_monitor;
GRANT SELECT ON stale_queued_tasks, queue_health, task_hygiene_settings, task_hygiene_runs, taskdb_cron_jobs
    TO taskdb_monitor;
-- `taskdb metrics` counts Queued and flagged rows from tasks itself: three columns, no task's content (0008).
GRANT SELECT (status, run_type, legacy_reason) ON tasks TO taskdb_monitor;
