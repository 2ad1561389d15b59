-- The queries behind `taskdb demo` (taskdb.report): the autoscaler's question, "how many tasks can be
-- claimed right now?", asked of the incident database before and after `taskdb upgrade head`. All read-only.
-- They expect a tasks table with user_id and run_type (the half-migrated incident, or head).

-- old_count --
-- The count the autoscaler trusted at 18:25 (the edge function /functions/v1/task-counts): every Queued row,
-- whoever owns it and whatever it runs on. The demo runs this same text before and after the upgrade.
-- legacy: rows written before user_id and run_type existed (both NULL).
SELECT count(*) AS queued,
       count(*) FILTER (WHERE user_id IS NULL AND run_type IS NULL) AS legacy,
       count(*) FILTER (WHERE created_at < now() - interval '24 hours') AS older_than_24h,
       coalesce(floor(extract(epoch FROM now() - min(created_at)) / 86400), 0)::integer AS oldest_days
FROM tasks
WHERE status::text = 'Queued'

-- claimable --
-- What the autoscaler calls since 0005_hygiene: taskdb's one definition of claimable work.
SELECT claimable_task_count(:run_type) AS claimable

-- counted_fates --
-- What became of each row the old count counted, read after the upgrade from tasks and task_hygiene_log.
-- A row's status, user_id and run_type before taskdb are the `previous` of its first logged change of that
-- column (what a downgrade restores, backfill.sql restore_batch), else its value now. One row per fate
-- (and legacy_reason, and whether a worker of the run type asked for could claim it now), with how many were legacy.
-- Fates: flagged (and so cancelled: a flagged row is never Queued), cancelled_stale (the cleanup: Queued
-- longer than queued_ttl), cancelled_with_parent (trigger tasks_cancel_children), backfilled (taskdb
-- derived or corrected user_id / run_type), untouched, moved_on (claimed or ended since, not by taskdb).
WITH wanted AS (SELECT taskdb_run_type_arg(:run_type) AS run_type),
history AS (
    SELECT l.task_id,
           (array_agg(l.previous -> 'status' ORDER BY l.id) FILTER (WHERE l.previous -> 'status' IS NOT NULL))[1] AS status_before,
           (array_agg(l.previous -> 'user_id' ORDER BY l.id) FILTER (WHERE l.previous -> 'user_id' IS NOT NULL))[1] AS user_id_before,
           (array_agg(l.previous -> 'run_type' ORDER BY l.id) FILTER (WHERE l.previous -> 'run_type' IS NOT NULL))[1] AS run_type_before,
           bool_or(l.action = 'backfill') AS backfilled,
           bool_or(l.action = 'cancel' AND starts_with(l.reason, 'stale:')) AS cancelled_stale,
           bool_or(l.action = 'cancel' AND starts_with(l.reason, 'trigger tasks_cancel_children:'))
               AS cancelled_with_parent
    FROM task_hygiene_log l
    GROUP BY l.task_id
),
counted AS (
    SELECT t.id, t.status::text AS status, t.run_type, t.legacy_reason, h.backfilled, h.cancelled_stale,
           h.cancelled_with_parent,
           (CASE WHEN h.user_id_before IS NOT NULL THEN h.user_id_before #>> '{}' ELSE t.user_id::text END) IS NULL
           AND (CASE WHEN h.run_type_before IS NOT NULL THEN h.run_type_before #>> '{}' ELSE t.run_type END) IS NULL
               AS legacy
    FROM tasks t
    LEFT JOIN history h ON h.task_id = t.id
    WHERE (CASE WHEN h.status_before IS NOT NULL THEN h.status_before #>> '{}' ELSE t.status::text END) = 'Queued'
),
fates AS (
    SELECT c.legacy, c.legacy_reason,
           CASE WHEN c.legacy_reason IS NOT NULL THEN 'flagged'
                WHEN c.cancelled_stale THEN 'cancelled_stale'
                WHEN c.cancelled_with_parent THEN 'cancelled_with_parent'
                WHEN c.status <> 'Queued' THEN 'moved_on'
                WHEN c.backfilled THEN 'backfilled'
                ELSE 'untouched' END AS fate,
           CASE WHEN c.legacy_reason IS NOT NULL OR c.status <> 'Queued' THEN NULL
                WHEN EXISTS (SELECT 1 FROM taskdb_ready_tasks r WHERE r.id = c.id AND r.run_type = w.run_type)
                    THEN 'claimable'
                WHEN c.run_type <> w.run_type THEN 'other_run_type'
                ELSE 'not_ready' END AS now
    FROM counted c, wanted w
)
SELECT fate, legacy_reason, now, count(*)::integer AS n, (count(*) FILTER (WHERE legacy))::integer AS legacy
FROM fates
GROUP BY fate, legacy_reason, now
ORDER BY fate, n DESC, legacy_reason, now

-- newly_queued --
-- Ready for a worker of :run_type now, yet not in the old count: Queued only since the backfill normalised the
-- status they were written with ('queued', ' Queued '), which the old count's exact 'Queued' never matched.
SELECT count(*)::integer AS n
FROM taskdb_ready_tasks r
WHERE r.run_type = taskdb_run_type_arg(:run_type)
  AND EXISTS (SELECT 1 FROM task_hygiene_log l
              WHERE l.task_id = r.id AND l.previous ? 'status' AND l.previous ->> 'status' IS DISTINCT FROM 'Queued')

-- guards --
-- What keeps the table honest after the upgrade: tasks' CHECK and foreign-key constraints and how many are
-- validated, and whether the daily cleanup is scheduled in pg_cron.
SELECT (SELECT count(*)::integer FROM pg_constraint
        WHERE conrelid = 'tasks'::regclass AND contype IN ('c', 'f')) AS constraints,
       (SELECT count(*)::integer FROM pg_constraint
        WHERE conrelid = 'tasks'::regclass AND contype IN ('c', 'f') AND convalidated) AS validated,
       (SELECT string_agg(conname, ', ' ORDER BY conname) FROM pg_constraint
        WHERE conrelid = 'tasks'::regclass AND contype IN ('c', 'f')) AS names,
       h.cron_job_installed AS cleanup_scheduled,
       s.cleanup_schedule, s.queued_ttl::text AS queued_ttl
FROM queue_health h, task_hygiene_settings s
