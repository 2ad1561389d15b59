-- The queries of `taskdb doctor` (taskdb.doctor). All read-only. Durations come back as seconds
-- (extract(epoch ...)) so both drivers hand Python plain numbers, whatever the interval holds.
-- {{version_table}} is taskdb's version table (taskdb_alembic_version unless configured, taskdb.version_table),
-- filled in by taskdb.doctor: a plain lower-case identifier, valid unquoted and inside quotes.

-- objects --
-- Which taskdb objects exist: tells "nothing to check" from "not upgraded yet" from "check everything".
SELECT to_regclass('tasks') IS NOT NULL AS has_tasks,
       to_regclass('{{version_table}}') IS NOT NULL AS has_version_table,
       to_regclass('queue_health') IS NOT NULL AS has_queue_health,
       to_regclass('task_hygiene_settings') IS NOT NULL AS has_settings,
       to_regclass('taskdb_cron_jobs') IS NOT NULL AS has_cron_record,
       current_database() AS database,
       current_user AS role,
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS superuser,
       now() AS checked_at

-- revisions --
-- taskdb's Alembic revision(s) in its version table: normally one row.
SELECT version_num FROM {{version_table}} ORDER BY version_num

-- queue_health --
-- The health row as JSON (timestamps ISO, intervals as text) plus the two ages in seconds.
SELECT to_jsonb(h) || jsonb_build_object(
           'oldest_queued_age_seconds', extract(epoch FROM h.oldest_queued_age),
           'cleanup_lag_seconds', extract(epoch FROM h.cleanup_lag)) AS health
FROM queue_health h

-- settings --
-- The tunables the checks compare against (task_hygiene_settings, one row).
SELECT extract(epoch FROM stale_after)::float8 AS stale_after_seconds, stale_after::text AS stale_after,
       extract(epoch FROM queued_ttl)::float8 AS queued_ttl_seconds, queued_ttl::text AS queued_ttl,
       cleanup_schedule
FROM task_hygiene_settings

-- flagged_queued --
-- Flagged rows that are Queued: tasks_flagged_not_queued forbids them, so they exist only if the constraint
-- was dropped or is NOT VALID. Reads tasks_flagged_idx (flagged rows only), not the whole table.
SELECT count(*) AS n,
       (array_agg(id::text ORDER BY created_at, id))[1:5] AS sample_ids
FROM tasks
WHERE legacy_reason IS NOT NULL AND status::text = 'Queued'

-- constraints --
-- Every constraint on tasks with whether it is validated (missing ones are found in Python by name).
SELECT conname::text AS name, convalidated AS validated
FROM pg_constraint
WHERE conrelid = 'tasks'::regclass
ORDER BY conname

-- invalid_indexes --
-- Indexes on tasks left INVALID by a failed CREATE INDEX CONCURRENTLY / REINDEX; one being built right now
-- is INVALID too until it finishes, so those (in pg_stat_progress_create_index) are left out.
SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS definition
FROM pg_index i
WHERE i.indrelid = 'tasks'::regclass
  AND NOT i.indisvalid
  AND NOT EXISTS (SELECT 1 FROM pg_stat_progress_create_index p WHERE p.index_relid = i.indexrelid)
ORDER BY 1

-- cleanup_record --
-- What revision 0006 recorded about the cleanup job: where it lives, its schedule, when it was (re)installed.
SELECT jobname, jobid, cron_database, run_database, schedule, installed_at,
       extract(epoch FROM now() - installed_at)::float8 AS installed_seconds_ago
FROM taskdb_cron_jobs
WHERE job = 'taskdb_cancel_stale_queued'

-- cron_job --
-- In the cron database (cron.database_name): the job as pg_cron holds it, its last successful run and its
-- last run of any outcome (cron.job_run_details). Row-level security shows a role only its own jobs.
SELECT j.jobid, j.schedule, j.active, j.database,
       extract(epoch FROM now() - s.last_success_at)::float8 AS last_success_seconds_ago,
       s.last_success_at,
       l.status AS last_status, l.return_message AS last_message, l.start_time AS last_start_at
FROM cron.job j
CROSS JOIN LATERAL (
    SELECT max(d.end_time) AS last_success_at
    FROM cron.job_run_details d WHERE d.jobid = j.jobid AND d.status = 'succeeded'
) s
LEFT JOIN LATERAL (
    SELECT d.status, d.return_message, d.start_time
    FROM cron.job_run_details d WHERE d.jobid = j.jobid ORDER BY d.runid DESC LIMIT 1
) l ON true
WHERE j.jobname::text = :jobname AND j.database = :database

-- cleanup_runs --
-- Fallback when cron.job_run_details cannot be read: the job's runs as the cleanup itself records them
-- (every call of cancel_stale_queued_tasks writes a task_hygiene_runs row with the job as actor).
SELECT extract(epoch FROM now() - max(finished_at))::float8 AS last_success_seconds_ago,
       max(finished_at) AS last_success_at
FROM task_hygiene_runs
WHERE actor = :actor AND finished_at IS NOT NULL
