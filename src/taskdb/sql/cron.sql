-- The statements about pg_cron that both the online path (taskdb.cron) runs and the offline script
-- (sql/offline.sql, filled in by taskdb.offline with its PL/pgSQL variables for the binds) inlines: one
-- definition each.

-- record_job --
-- One row of taskdb_cron_jobs: what is installed; an unchanged row is not rewritten (installed_at stays).
INSERT INTO taskdb_cron_jobs AS r (job, jobname, jobid, cron_database, run_database, schedule, command)
VALUES (:job, :jobname, :jobid, :cron_database, :run_database, :schedule, :command)
ON CONFLICT (job) DO UPDATE
SET jobname = EXCLUDED.jobname, jobid = EXCLUDED.jobid, cron_database = EXCLUDED.cron_database,
    run_database = EXCLUDED.run_database, schedule = EXCLUDED.schedule, command = EXCLUDED.command,
    installed_at = now()
WHERE (r.jobname, r.jobid, r.cron_database, r.run_database, r.schedule, r.command)
      IS DISTINCT FROM (EXCLUDED.jobname, EXCLUDED.jobid, EXCLUDED.cron_database, EXCLUDED.run_database,
                        EXCLUDED.schedule, EXCLUDED.command)

-- sees_every_job --
-- Row-level security hides other users' jobs from non-superusers: only such a role can tell pg_cron unused.
SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user

-- pg_cron_in_use --
-- Whether pg_cron (in the cron database) serves anybody else, once taskdb unscheduled the jobs it names: a
-- job is left, or history of a job that is not one of those (never drop a table holding rows taskdb did not write).
SELECT EXISTS (SELECT 1 FROM cron.job)
    OR EXISTS (SELECT 1 FROM cron.job_run_details WHERE jobid <> ALL (CAST(:ours AS bigint[])))
