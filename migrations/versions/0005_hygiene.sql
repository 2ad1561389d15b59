-- Frozen SQL of revision 0005_hygiene: one definition of ready work, the count and the claim that
-- share it, the stale-queue cleanup, the views that make the queue's health visible, the orchestrator
-- lifecycle trigger, and the grants.
--
-- Least privilege: functions that read or write more than their callers may (the count, the claim, the
-- cleanup, the trigger) are SECURITY DEFINER with search_path pinned to pg_catalog, taskdb's schema, pg_temp, so
-- a caller's objects can never stand in for ours; EXECUTE is revoked from PUBLIC and granted to roles.

-- task_hygiene_settings --
-- One row that DBAs tune with UPDATE; every function and view below reads it, none hard-codes a number.
CREATE TABLE IF NOT EXISTS task_hygiene_settings (
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

-- task_hygiene_runs --
-- One row per call of cancel_stale_queued_tasks: when, by whom, how many it cancelled.
CREATE TABLE IF NOT EXISTS task_hygiene_runs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    actor text NOT NULL,
    max_age interval NOT NULL,
    batch_size integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    cancelled integer
);

-- taskdb_run_type_arg --
-- The run type a caller asked for: 'gpu' is the autoscaler's word for 'cloud'; anything else unknown
-- is an error naming the allowed values (a typo must not silently count zero).
CREATE OR REPLACE FUNCTION taskdb_run_type_arg(p_run_type text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF @schema@.taskdb_canonical_run_type(p_run_type) IS NULL THEN  -- callable from any search_path
        RAISE EXCEPTION 'unknown run type %: expected ''cloud'' (alias ''gpu'') or ''local''', quote_nullable(p_run_type)
            USING ERRCODE = '22023';
    END IF;
    RETURN @schema@.taskdb_canonical_run_type(p_run_type);
END
$$;

-- taskdb_ready_tasks --
-- THE definition of ready work, used by both claimable_task_count and claim_next_task: Queued, not
-- flagged, younger than queued_ttl, its dependency (if any) Complete, its user has credits.
-- (The per-user concurrency limit is applied on top, by the count and the claim alike.)
CREATE OR REPLACE VIEW taskdb_ready_tasks AS
SELECT t.id, t.user_id, t.run_type, t.created_at
FROM tasks t
WHERE t.status = 'Queued'
  AND t.legacy_reason IS NULL
  AND t.created_at > now() - (SELECT s.queued_ttl FROM task_hygiene_settings s)
  AND (t.dependant_on IS NULL
       OR EXISTS (SELECT 1 FROM tasks d WHERE d.id = t.dependant_on AND d.status = 'Complete'))
  AND EXISTS (SELECT 1 FROM users u WHERE u.id = t.user_id AND u.credits > 0);

-- claimable_task_count --
-- What the autoscaler calls: how many tasks of this run type workers could claim right now.
-- Per user: min(limit - the user's In Progress tasks of any run type, ready tasks); with
-- p_include_active: min(limit, the user's In Progress tasks of this run type + ready tasks).
CREATE OR REPLACE FUNCTION claimable_task_count(p_run_type text DEFAULT 'cloud', p_include_active boolean DEFAULT false)
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

-- claim_next_task --
-- Claims the oldest ready task of a user below the limit: In Progress, worker_id, updated_at.
-- Rows are taken FOR UPDATE SKIP LOCKED (claimers never wait on each other's rows); a transaction-
-- scoped advisory lock per user serialises the limit check, so concurrent claims cannot push a user
-- over it. Returns the claimed row, or no row.
CREATE OR REPLACE FUNCTION claim_next_task(p_worker_id text, p_run_type text DEFAULT 'cloud')
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

-- cancel_stale_queued_tasks --
-- Cancels up to one batch of Queued tasks created more than p_max_age ago (settings when NULL),
-- oldest first, SKIP LOCKED; each gets an error_message saying why and when, and a task_hygiene_log
-- row; the call is recorded in task_hygiene_runs. Returns how many it cancelled. One batch per call
-- keeps every transaction's row locks few and short: callers loop until it returns 0
-- (taskdb_cancel_stale_queued_all does, committing between batches). The actor recorded is the
-- session's taskdb.actor setting, else the session's role.
CREATE OR REPLACE FUNCTION cancel_stale_queued_tasks(p_max_age interval DEFAULT NULL, p_batch_size integer DEFAULT NULL)
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

-- taskdb_cancel_stale_queued_all --
-- What the pg_cron job and `taskdb cleanup` run: batches until none is left, committing after each.
-- (SECURITY INVOKER: a SECURITY DEFINER procedure may not COMMIT; the function it calls is the definer.)
CREATE OR REPLACE PROCEDURE taskdb_cancel_stale_queued_all(p_actor text DEFAULT NULL)
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

-- stale_queued_tasks --
-- Queued tasks older than stale_after (what an operator should look at), and when cleanup cancels them.
CREATE OR REPLACE VIEW stale_queued_tasks AS
SELECT t.id, t.task_type, t.user_id, t.run_type, t.created_at,
       -- NULL for a created_at of +-infinity: PostgreSQL 15 raises "cannot subtract infinite timestamps",
       -- which would fail the whole view for one legacy row (17 returns an infinite interval)
       CASE WHEN isfinite(t.created_at) THEN now() - t.created_at END AS age,
       t.attempts, t.legacy_reason,
       t.created_at + (SELECT s.queued_ttl FROM task_hygiene_settings s) AS cancel_due_at
FROM tasks t
WHERE t.status = 'Queued'
  AND t.created_at < now() - (SELECT s.stale_after FROM task_hygiene_settings s);  -- computed once

-- taskdb_cron_job_state --
-- Whether the cleanup's pg_cron job exists in this database's cron.job, and whether it is active:
-- installed false and active NULL when pg_cron is not installed here. Revision 0006 replaces it with one
-- that also finds a job scheduled from another database (cron.database_name).
CREATE OR REPLACE FUNCTION taskdb_cron_job_state(OUT installed boolean, OUT active boolean)
LANGUAGE plpgsql STABLE
SECURITY DEFINER SET search_path = pg_catalog, @schema@, pg_temp AS $$
BEGIN
    IF to_regclass('cron.job') IS NULL THEN
        installed := false;
        RETURN;
    END IF;
    EXECUTE 'SELECT count(*) > 0, coalesce(bool_or(active), false) FROM cron.job WHERE jobname = ''taskdb_cancel_stale_queued'''
    INTO installed, active;
END
$$;

-- queue_health --
-- One row: the queue at a glance, for dashboards and `taskdb doctor`.
CREATE OR REPLACE VIEW queue_health AS
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

-- taskdb_cancel_children --
-- When tasks become Failed or Cancelled, their Queued descendants (by dependant_on or
-- params.orchestrator_task_id_ref, transitively) can never run: cancel them with a reason, and log each.
-- A statement-level trigger with transition tables: one recursive query per UPDATE statement, however
-- many rows it ended (a cleanup batch of 10,000 is one query, not 10,000). UNION stops at cycles; the
-- trigger's own UPDATE does not cascade again (taskdb.cascading), so deep chains cost no recursion.
-- jit = off: the recursive query's cost estimate would otherwise JIT-compile on every statement.
CREATE OR REPLACE FUNCTION taskdb_cancel_children() RETURNS trigger
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

-- tasks_cancel_children --
-- In a transaction of its own, after the objects: CREATE TRIGGER takes SHARE ROW EXCLUSIVE on tasks, which
-- the application's writes queue behind, so nothing else may run while it is held. Created when missing
-- (a rerun): DROP TRIGGER would take ACCESS EXCLUSIVE, which also waits for and blocks every reader, and
-- inside the objects' transaction would hold it through the revokes, roles and grants until that COMMIT.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgrelid = 'tasks'::regclass AND tgname = 'tasks_cancel_children') THEN
        CREATE TRIGGER tasks_cancel_children
        AFTER UPDATE ON tasks
        REFERENCING OLD TABLE AS taskdb_old_rows NEW TABLE AS taskdb_new_rows
        FOR EACH STATEMENT
        EXECUTE FUNCTION taskdb_cancel_children();
    END IF;
END
$$;

-- revokes --
-- Nobody but the owner and the roles below may call these.
REVOKE EXECUTE ON FUNCTION claimable_task_count(text, boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION claim_next_task(text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION cancel_stale_queued_tasks(interval, integer) FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE taskdb_cancel_stale_queued_all(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION taskdb_cron_job_state() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION taskdb_cancel_children() FROM PUBLIC;

-- grants --
-- To the group roles (NOLOGIN) the README names: grant them to your login roles.
GRANT EXECUTE ON FUNCTION claimable_task_count(text, boolean) TO taskdb_autoscaler, taskdb_monitor;
GRANT EXECUTE ON FUNCTION claim_next_task(text, text) TO taskdb_worker;
GRANT EXECUTE ON FUNCTION taskdb_cron_job_state() TO taskdb_monitor;
GRANT SELECT ON stale_queued_tasks, queue_health, task_hygiene_settings, task_hygiene_runs TO taskdb_monitor;
-- The roles reach these through their schema: USAGE on it, where they do not have it already (public gives
-- it to everyone; a schema of the application's may not). This transaction's search_path is that schema.
DO $$
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY ARRAY['taskdb_autoscaler', 'taskdb_worker', 'taskdb_monitor'] LOOP
        IF NOT has_schema_privilege(v_role, current_schema(), 'USAGE') THEN
            EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', current_schema(), v_role);
        END IF;
    END LOOP;
END
$$;

-- drop_objects --
-- Downgrade: everything above, dependants first (grants go with their objects; roles stay, see README).
DROP TRIGGER IF EXISTS tasks_cancel_children ON tasks;
DROP FUNCTION IF EXISTS taskdb_cancel_children();
DROP VIEW IF EXISTS queue_health;
DROP FUNCTION IF EXISTS taskdb_cron_job_state();
DROP VIEW IF EXISTS stale_queued_tasks;
DROP PROCEDURE IF EXISTS taskdb_cancel_stale_queued_all(text);
DROP FUNCTION IF EXISTS cancel_stale_queued_tasks(interval, integer);
DROP FUNCTION IF EXISTS claim_next_task(text, text);
DROP FUNCTION IF EXISTS claimable_task_count(text, boolean);
DROP VIEW IF EXISTS taskdb_ready_tasks;
DROP FUNCTION IF EXISTS taskdb_run_type_arg(text);
DROP TABLE IF EXISTS task_hygiene_runs;
DROP TABLE IF EXISTS task_hygiene_settings;
