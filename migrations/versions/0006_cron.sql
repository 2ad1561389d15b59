-- Frozen SQL of revision 0006_cron: the record of the pg_cron jobs taskdb installed, and the function that
-- tells queue_health whether the cleanup job is installed and active. The jobs themselves are scheduled by
-- taskdb.cron (cron.schedule / cron.schedule_in_database), in whichever database cron.database_name names.

-- taskdb_cron_jobs --
-- What taskdb scheduled with pg_cron, one row per job. cron.job lives in cron.database_name, which may be
-- another database: this record is how the target database knows about its job, and where a downgrade
-- finds it.
CREATE TABLE IF NOT EXISTS taskdb_cron_jobs (
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

-- taskdb_cron_job_state --
-- Whether the cleanup's pg_cron job is installed and active. Where cron.job is in this database it is
-- the truth (the job is looked up by its recorded name and this database). Where the job lives in another
-- database (cron.database_name), cron.job is out of reach: installed comes from taskdb_cron_jobs and
-- active is NULL (unknown; queue_health.cleanup_lag shows whether it runs).
-- SECURITY DEFINER (as in 0005): cron.job has row-level security (each role sees its own jobs), so a
-- monitoring role would otherwise never see the job the migrating role scheduled; search_path is pinned.
CREATE OR REPLACE FUNCTION taskdb_cron_job_state(OUT installed boolean, OUT active boolean)
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

-- taskdb_cron_job_state_0005 --
-- Downgrade: the body 0005_hygiene created, restored as it was (queue_health depends on the function;
-- CREATE OR REPLACE keeps its grants).
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

-- grants --
-- Where 0005 made the monitor role: it may read where the jobs are (queue_health needs no grant here).
GRANT SELECT ON taskdb_cron_jobs TO taskdb_monitor;

-- drop_objects --
-- Downgrade: the record (after the jobs are unscheduled).
DROP TABLE IF EXISTS taskdb_cron_jobs;
