-- The read of `taskdb metrics` (taskdb.metrics.collector): one statement per scrape. Times and ages come back as
-- epoch seconds (float8), so both drivers hand Python plain numbers.

-- scrape --
-- Everything a scrape reports: queue_health's row (the figures `taskdb doctor` reads, claimable_task_count per run
-- type included), the Queued rows per run type and the flagged ones among them (an index-only pass over the partial
-- index on Queued rows, plus their heap rows for legacy_reason), the cleanup's runs, its schedule and when its job
-- was installed. A missing figure (nothing Queued, no cleanup yet, no job) is 0, never NULL; the oldest Queued task
-- created at -infinity is infinitely old.
SELECT h.ready_cloud, h.ready_local,
       h.claimable_cloud, h.claimable_local,
       q.queued_cloud, q.queued_local, q.flagged_queued,
       h.stale_count, h.flagged_count,
       CASE WHEN h.oldest_queued_at IS NULL OR h.oldest_queued_at = 'infinity' THEN 0
            WHEN h.oldest_queued_at = '-infinity' THEN 'Infinity'
            ELSE extract(epoch FROM h.oldest_queued_age) END::float8 AS oldest_queued_age_seconds,
       extract(epoch FROM s.stale_after)::float8 AS stale_after_seconds,
       coalesce(extract(epoch FROM h.last_cleanup_at), 0)::float8 AS cleanup_last_success_timestamp,
       r.runs AS cleanup_runs, r.cancelled AS cleanup_cancelled,
       coalesce(j.schedule, s.cleanup_schedule) AS cleanup_schedule,
       coalesce(extract(epoch FROM j.installed_at), 0)::float8 AS cron_job_installed_timestamp,
       h.cron_job_installed, h.cron_job_active
FROM queue_health h
CROSS JOIN task_hygiene_settings s
CROSS JOIN (
    SELECT count(*) FILTER (WHERE t.run_type = 'cloud') AS queued_cloud,
           count(*) FILTER (WHERE t.run_type = 'local') AS queued_local,
           count(*) FILTER (WHERE t.legacy_reason IS NOT NULL) AS flagged_queued
    FROM tasks t
    WHERE t.status = 'Queued'
) q
CROSS JOIN (
    SELECT count(*) FILTER (WHERE finished_at IS NOT NULL) AS runs, coalesce(sum(cancelled), 0) AS cancelled
    FROM task_hygiene_runs
) r
LEFT JOIN taskdb_cron_jobs j ON j.job = 'taskdb_cancel_stale_queued'
