-- The SQL of `taskdb sql` (Alembic --sql mode): static SQL a DBA reviews and applies with
-- `psql -v ON_ERROR_STOP=1 -X -f upgrade.sql`, that adapts to the database at RUN time (DO blocks read
-- the catalog), so that it does on every starting state what the online upgrade does, and a rerun finishes
-- or repeats nothing.
--
-- {{name}} placeholders are filled by src/taskdb/offline.py when the script is generated (literals already
-- quoted). ${status_type} and ${lock_clause} stay in the backfill's batch statement: the procedure fills them
-- at run time (the generator cannot know whether tasks.status is text or an enum). The procedures' decisions and
-- queries are not written here: they EXECUTE the statements of src/taskdb/sql/backfill.sql and locks.sql, the
-- online code's own ({{name}} and {{name_using}}: a statement with its binds as $1..$n, and what the procedure
-- passes for them).

-- schema_guard --
-- The queue the script was generated for, checked before anything, as the online upgrade checks it: stop where
-- the schema does not exist, and, when no schema was named (TASKDB_SCHEMA when generating), where tasks exists
-- in several schemas or only in another one.
DO $taskdb$
DECLARE
    v_schemas text := (SELECT string_agg(n.nspname::text, ', ' ORDER BY n.nspname) FROM pg_class c
                       JOIN pg_namespace n ON n.oid = c.relnamespace
                       WHERE c.relname = 'tasks' AND c.relkind IN ('r', 'p')
                         AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_temp\_%');
    v_here boolean := EXISTS (SELECT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                              WHERE c.relname = 'tasks' AND c.relkind IN ('r', 'p') AND n.nspname = {{schema}});
BEGIN
    IF to_regnamespace({{schema_ident}}) IS NULL THEN
        RAISE EXCEPTION 'schema % does not exist: create it (CREATE SCHEMA), or generate the script with '
            'TASKDB_SCHEMA naming the schema that holds tasks', {{schema}};
    END IF;
    IF NOT {{named}} AND v_schemas LIKE '%,%' THEN
        RAISE EXCEPTION 'a tasks table exists in several schemas (%): generate the script with TASKDB_SCHEMA '
            'naming the queue''s schema; nothing was changed', v_schemas;
    END IF;
    IF NOT {{named}} AND NOT v_here AND v_schemas IS NOT NULL THEN
        RAISE EXCEPTION 'no tasks table in schema %, but % has one: generate the script with TASKDB_SCHEMA naming '
            'the queue''s schema; nothing was changed', {{schema}}, v_schemas;
    END IF;
END
$taskdb$;

-- upgrade_lock --
-- The upgrade lock's key as a session advisory lock (the online upgrade takes it transaction-scoped, see
-- src/taskdb/upgrade_lock.py): an online upgrade and this script never interleave. Released at the end of the
-- script, or when psql exits. The script needs one session: see one_session.
DO $taskdb$
BEGIN
    IF NOT pg_try_advisory_lock({{lock_key}}) THEN
        RAISE EXCEPTION 'another taskdb upgrade holds the upgrade lock on this database (server pid %): let it '
            'finish, then rerun this script (it is idempotent)',
            (SELECT string_agg(pid::text, ', ') FROM pg_locks WHERE locktype = 'advisory' AND granted
             AND ((classid::bigint << 32) | objid::bigint) = {{lock_key}});
    END IF;
END
$taskdb$;

-- one_session --
-- Before each version bump: the lock taken at the start is still this session's. Through a transaction pooler
-- (PgBouncer pool_mode = transaction, Supabase's port 6543) psql's statements land on different server sessions:
-- stop there, before the version moves, instead of running on without the lock.
DO $taskdb$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()
                   AND ((classid::bigint << 32) | objid::bigint) = {{lock_key}}) THEN
        RAISE EXCEPTION 'this script needs one database session from start to end (it holds the upgrade lock): '
            'apply it over a direct connection or a session pooler, not a transaction pooler (PgBouncer '
            'pool_mode = transaction, Supabase port 6543); rerun it there, it resumes';
    END IF;
END
$taskdb$;

-- upgrade_unlock --
DO $taskdb$ BEGIN PERFORM pg_advisory_unlock({{lock_key}}); END $taskdb$;

-- adopt_version --
-- taskdb's revision lives in its own version table, {{version_table}}. A database an earlier taskdb stamped in the
-- application's alembic_version gets its row moved there; the application's rows stay as they are
-- (taskdb.version_table).
DO $taskdb$
DECLARE
    v_ours CONSTANT text[] := {{ours}};
    v_found text[];
BEGIN
    IF to_regclass({{version_table_literal}}) IS NULL AND to_regclass('alembic_version') IS NOT NULL THEN
        SELECT array_agg(version_num::text) INTO v_found FROM alembic_version WHERE version_num = ANY (v_ours);
        IF cardinality(v_found) = 1 THEN
            {{create}};
            INSERT INTO {{version_table}} (version_num) VALUES (v_found[1]);
            DELETE FROM alembic_version WHERE version_num = v_found[1];
            RAISE NOTICE 'taskdb''s revision % moved from alembic_version to %', v_found[1], {{version_table_literal}};
        END IF;
    END IF;
END
$taskdb$;

-- version_guard --
-- The database must be at the revision this script starts from, or at one it upgrades to (a rerun).
DO $taskdb$
DECLARE
    v_allowed CONSTANT text[] := {{allowed}};
    v_current text;
BEGIN
    IF to_regclass({{version_table_literal}}) IS NOT NULL THEN
        SELECT string_agg(version_num, ', ') INTO v_current FROM {{version_table}};
    END IF;
    IF v_current IS NULL AND NOT {{from_base}} THEN
        RAISE EXCEPTION 'this script upgrades from revision % but the database has no taskdb revision: '
            'generate the script with `taskdb sql base:%`', {{start}}, {{dest}};
    ELSIF v_current IS NOT NULL AND NOT v_current = ANY (v_allowed) THEN
        RAISE EXCEPTION 'this script upgrades % -> %, but the database is at revision %: generate the '
            'script for its range with `taskdb sql %:%`', {{start}}, {{dest}}, v_current, v_current, {{dest}};
    END IF;
END
$taskdb$;

-- lock_wait --
-- A batch of an offline procedure waited for a lock longer than the session's lock_timeout (online,
-- taskdb.locks.run_locked does the same): name the sessions that made it wait (blockers of src/taskdb/sql/locks.sql,
-- the query taskdb.locks.find_blockers runs), give up with lock_not_available after p_attempts, else warn and pause
-- (backoff of locks.sql, with the LockPolicy's base and cap from when the script was generated) before the caller's
-- next attempt. The pid, application, state, age and lock named as taskdb.errors.LockRetriesExhausted names them.
CREATE OR REPLACE FUNCTION pg_temp.taskdb_lock_wait(
    p_label text,
    p_attempt integer,
    p_attempts integer,
    p_attempt_started timestamptz,
    p_rerun text
)
RETURNS void
LANGUAGE plpgsql AS $taskdb_lock_wait$
DECLARE
    c_blockers CONSTANT text := {{blockers}};
    c_backoff CONSTANT text := {{backoff}};
    v_blocker record;
    v_blockers text;
    v_pause double precision;
BEGIN
    PERFORM pg_stat_clear_snapshot();  -- pg_stat_activity as it is now, not as this transaction first read it
    FOR v_blocker IN EXECUTE c_blockers USING {{blockers_using}} LOOP
        v_blockers := concat_ws('; ', v_blockers, format('pid %s (%s, %s, transaction open %s, holds %s on %s)',
            v_blocker.pid, coalesce(nullif(v_blocker.application_name, ''), 'no application_name'), v_blocker.state,
            v_blocker.xact_age, v_blocker.mode, v_blocker.relation));
    END LOOP;
    IF p_attempt >= p_attempts THEN
        RAISE EXCEPTION 'Failed after % attempts to take the lock for: % -- blocked by: %. Nothing half-done is left; '
            'rerun when the blocker is gone (%).', p_attempt, p_label,
            coalesce(v_blockers, 'no blocking session found any more'), p_rerun
            USING ERRCODE = 'lock_not_available';
    END IF;
    EXECUTE c_backoff INTO v_pause USING {{backoff_using}};
    RAISE WARNING 'lock not available for % (attempt %/%), held by %; retrying in % s', p_label, p_attempt,
        p_attempts, coalesce(v_blockers, 'nobody any more'), round(v_pause::numeric, 1);
    PERFORM pg_sleep(v_pause);
END
$taskdb_lock_wait$;

-- backfill_procedure --
-- The backfill engine of src/taskdb/backfill.py (run_backfill) as a procedure of this session. Every decision is
-- a statement of src/taskdb/sql/backfill.sql, THE SAME the online engine runs: begin_job (the rows that need work,
-- and the sweep to run from the checkpoint, taskdb_backfill_progress: a killed run resumes after its last
-- committed batch), resolve_batch (one batch, committed on its own with its checkpoint), next_size (the next
-- window), end_sweep (what the sweep did, what remains, the next sweep's mode), next_sweep and finish_job. This
-- loop only logs (one NOTICE per batch), pauses p_batch_delay between batches, and retries a batch that waited
-- longer than the session's lock_timeout (pg_temp.taskdb_lock_wait, p_lock_attempts attempts). The pacing
-- (p_batch_size, p_target_batch_ms, p_min_batch_size, p_max_batch_size) is BackfillConfig's. CALL it outside a
-- transaction block (it COMMITs).
CREATE OR REPLACE PROCEDURE pg_temp.taskdb_backfill(
    p_job text,
    p_actor text,
    p_batch_size integer DEFAULT 1000,
    p_batch_delay interval DEFAULT interval '0',
    p_max_sweeps integer DEFAULT 50,
    p_lock_attempts integer DEFAULT 8,
    p_target_batch_ms numeric DEFAULT 50,
    p_min_batch_size integer DEFAULT 100,
    p_max_batch_size integer DEFAULT 50000
)
LANGUAGE plpgsql AS $taskdb_backfill$
DECLARE
    -- the statements of src/taskdb/sql/backfill.sql, their binds as $1..$n
    c_begin_job CONSTANT text := {{begin_job}};
    c_resolve_batch CONSTANT text := {{resolve_batch}};
    c_next_size CONSTANT text := {{next_size}};
    c_end_sweep CONSTANT text := {{end_sweep}};
    c_next_sweep CONSTANT text := {{next_sweep}};
    c_finish_job CONSTANT text := {{finish_job}};
    c_lock_clauses CONSTANT jsonb := {{lock_clauses}};  -- how a sweep of each mode takes its rows
    v_batch_statement text;
    v_job record;
    v_batch record;
    v_end record;
    v_total bigint;
    v_done_total bigint := 0;
    v_sweep integer;
    v_mode text;
    v_after uuid;
    v_resumed uuid;  -- a crashed run committed this sweep's batches up to this id
    v_done bigint;
    v_flagged bigint;
    v_waiting bigint;
    v_previous_waiting bigint;
    v_attempt integer;
    v_started timestamptz;
    v_attempt_started timestamptz;
    v_elapsed_ms numeric;
    v_size integer := p_batch_size;
BEGIN
    IF p_batch_size < 1 OR p_max_sweeps < 2 OR p_lock_attempts < 1 OR p_batch_delay < interval '0'
       OR p_target_batch_ms < 0 THEN
        RAISE EXCEPTION 'taskdb_backfill: batch_size >= 1, max_sweeps >= 2, lock_attempts >= 1, batch_delay >= 0, '
            'target_batch_ms >= 0';
    END IF;
    -- text, or the enum task_status: the batch casts the new status to it
    SELECT replace(c_resolve_batch, '${status_type}', format_type(a.atttypid, a.atttypmod)) INTO STRICT v_batch_statement
    FROM pg_attribute a WHERE a.attrelid = 'tasks'::regclass AND a.attname = 'status' AND NOT a.attisdropped;

    EXECUTE c_begin_job INTO STRICT v_job USING {{begin_job_using}};
    COMMIT;
    v_total := v_job.total;
    v_sweep := v_job.sweep;
    v_mode := v_job.mode;
    v_after := v_job.last_id;
    IF v_job.resumed THEN
        RAISE NOTICE 'backfill %: resuming sweep % (%) %', p_job, v_sweep, v_mode,
            coalesce('after id ' || v_after, 'from its start');
    END IF;
    RAISE NOTICE 'backfill %: % rows need work', p_job, v_total;

    WHILE v_total > 0 LOOP  -- nothing to do (0004's catch-up, a rerun): no sweep over the table at all
        v_done := 0;
        v_flagged := 0;
        v_waiting := 0;
        v_resumed := v_after;
        LOOP  -- the batches of one sweep
            v_attempt := 1;
            v_started := clock_timestamp();
            LOOP  -- attempts at one batch: only lock_not_available is retried
                v_attempt_started := clock_timestamp();
                BEGIN
                    EXECUTE replace(v_batch_statement, '${lock_clause}', c_lock_clauses ->> v_mode)
                    INTO STRICT v_batch USING {{resolve_batch_using}};
                    EXIT;
                EXCEPTION WHEN lock_not_available THEN
                    PERFORM pg_temp.taskdb_lock_wait(format('backfill %s batch', p_job), v_attempt, p_lock_attempts,
                        v_attempt_started, format('the backfill resumes from its checkpoint: sweep %s, %s', v_sweep, v_mode));
                    v_attempt := v_attempt + 1;
                END;
            END LOOP;
            COMMIT;  -- the batch and its checkpoint, together
            EXIT WHEN v_batch.scanned = 0;
            v_after := v_batch.last_id;
            v_done := v_done + v_batch.done;
            v_flagged := v_flagged + v_batch.flagged;
            v_waiting := v_waiting + v_batch.waiting;
            v_done_total := v_done_total + v_batch.done;
            v_elapsed_ms := extract(epoch FROM clock_timestamp() - v_started) * 1000;
            RAISE NOTICE 'backfill %: sweep % (%) batch of % ids in % ms: % of % done, % remaining',
                p_job, v_sweep, v_mode, v_batch.scanned, round(v_elapsed_ms), v_done_total,
                greatest(v_total, v_done_total), greatest(v_total, v_done_total) - v_done_total;
            EXECUTE c_next_size INTO STRICT v_size USING {{next_size_using}};
            IF p_batch_delay > interval '0' THEN
                PERFORM pg_sleep(extract(epoch FROM p_batch_delay)::float8);
            END IF;
        END LOOP;
        EXECUTE c_end_sweep INTO STRICT v_end USING {{end_sweep_using}};
        RAISE NOTICE 'backfill %: sweep % (%) done: % rows, % flagged, % waiting; % remaining',
            p_job, v_sweep, v_mode, v_end.done, v_flagged, v_end.waiting, v_end.remaining;
        IF v_end.left_over THEN
            RAISE WARNING 'backfill %: % rows written during the backfill still need work after % sweeps; the '
                'catch-up backfill of 0004_constraints (or a rerun) takes them', p_job, v_end.remaining, v_sweep;
        END IF;
        EXIT WHEN v_end.next_mode IS NULL;
        v_previous_waiting := v_end.waiting;
        v_sweep := v_sweep + 1;
        v_mode := v_end.next_mode;
        v_after := NULL;
        EXECUTE c_next_sweep USING {{next_sweep_using}};
        COMMIT;
    END LOOP;

    EXECUTE c_finish_job USING {{finish_job_using}};
    COMMIT;
END
$taskdb_backfill$;

-- backfill_call --
-- Outside a transaction block (the procedure commits every batch); no statement_timeout for the whole run.
SET lock_timeout = {{lock_timeout}};
SET statement_timeout = 0;
-- every batch is short: JIT compiling it would cost more than it saves
SET jit = off;
-- a batch does not wait for its WAL flush: a crash loses at most the last batches, with their checkpoint
SET synchronous_commit = off;
CALL pg_temp.taskdb_backfill(
    p_job => {{job}}, p_actor => {{actor}},
    p_batch_size => {{batch_size}}, p_target_batch_ms => {{target_batch_ms}},
    p_min_batch_size => {{min_batch_size}}, p_max_batch_size => {{max_batch_size}},
    p_batch_delay => {{batch_delay}}, p_max_sweeps => {{max_sweeps}}, p_lock_attempts => {{lock_attempts}}
);
RESET synchronous_commit;
RESET jit;
RESET statement_timeout;
RESET lock_timeout;

-- cleanup_call --
-- Cancel what is already stale: the procedure the pg_cron job runs, one committed batch at a time.
SET lock_timeout = {{lock_timeout}};
SET statement_timeout = 0;
CALL taskdb_cancel_stale_queued_all({{actor}});
RESET statement_timeout;
RESET lock_timeout;

-- cron_schedule --
-- What the online upgrade does about pg_cron (taskdb.cron: detect, schedule_jobs, record, warn_if_missing), read
-- at run time. pg_cron keeps its jobs in one database per server (cron.database_name). When that is this
-- database: create pg_cron if absent (a refusal is reported as online), schedule both jobs (cron.schedule) and
-- record them in taskdb_cron_jobs. Where pg_cron cannot be used the online upgrade's own words are raised: a NOTICE
-- under TASKDB_CRON=auto, the error under require. A cron database elsewhere cannot be reached from this script:
-- it says to run `taskdb cron install` afterwards.
DO $taskdb$
DECLARE
    c_mode CONSTANT text := {{mode}};  -- TASKDB_CRON when the script was generated: auto or require
    c_texts CONSTANT jsonb := {{texts}};  -- taskdb.cron.readiness's texts as format() patterns
    v_superuser boolean := (SELECT rolsuper FROM pg_roles WHERE rolname = current_user);
    v_libraries text;
    v_denied text;  -- why this role may not read shared_preload_libraries
    v_cron_db text;
    v_cron_db_denied text;
    v_available text := (SELECT default_version FROM pg_available_extensions WHERE name = 'pg_cron');
    v_installed text := (SELECT extversion FROM pg_extension WHERE extname = 'pg_cron');
    v_problem text;
    v_missing boolean := false;  -- pg_cron itself is missing (the fix is to enable it), not a privilege
    v_message text;
    v_refused text;
    v_search_path text := current_setting('search_path');
    v_owned text := {{extension_owner}};
    v_job record;
    v_name text;
    v_qualified text;
    v_schedule text;
    v_command text;
    v_jobid bigint;
    v_database text;
BEGIN
    BEGIN
        v_libraries := current_setting('shared_preload_libraries');
    EXCEPTION WHEN insufficient_privilege THEN
        v_denied := SQLERRM;
    END;
    BEGIN
        v_cron_db := current_setting('cron.database_name', true);
    EXCEPTION WHEN insufficient_privilege THEN
        v_cron_db_denied := SQLERRM;
    END;
    IF v_denied IS NULL AND NOT 'pg_cron' = ANY (
        SELECT regexp_replace(btrim(btrim(lib), '"'), '^.*/', '') FROM unnest(string_to_array(v_libraries, ',')) lib)
    THEN
        v_problem := c_texts ->> CASE WHEN v_available IS NULL THEN 'not_loaded_no_files' ELSE 'not_loaded' END;
        v_missing := true;
    ELSIF v_denied IS NOT NULL AND v_installed IS NULL THEN
        v_problem := format(c_texts ->> 'settings_denied', current_user, v_denied);
    ELSE
        IF v_denied IS NOT NULL THEN
            v_cron_db := current_database();  -- pg_cron's schema here proves it runs here
        END IF;
        IF coalesce(v_cron_db, '') = '' THEN
            v_problem := CASE WHEN v_cron_db_denied IS NULL THEN c_texts ->> 'cron_database_unset'
                              ELSE format(c_texts ->> 'cron_database_denied', v_cron_db_denied) END;
        ELSIF NOT EXISTS (SELECT FROM pg_database WHERE datname = v_cron_db) THEN
            v_problem := format(c_texts ->> 'unknown_cron_database', v_cron_db);
        ELSIF v_cron_db <> current_database() THEN
            v_message := format(c_texts ->> CASE WHEN c_mode = 'require' THEN 'out_of_reach_required'
                                                 ELSE 'out_of_reach' END, v_cron_db);
        ELSIF v_installed IS NULL AND v_available IS NULL THEN
            v_problem := c_texts ->> 'extension_files_missing';
            v_missing := true;
        ELSIF coalesce((regexp_match(coalesce(v_installed, v_available), '^(\d+)\.(\d+)'))::int[]
                       < {{named_jobs_since}}, true) THEN
            v_problem := format(c_texts ->> 'too_old', coalesce(v_installed, v_available), v_cron_db);
        ELSIF v_installed IS NOT NULL AND NOT v_superuser AND NOT has_schema_privilege('cron', 'USAGE') THEN
            v_problem := format(c_texts ->> 'no_cron_schema_usage', current_user, v_cron_db);
        END IF;
    END IF;
    IF v_problem IS NULL AND v_message IS NULL AND v_installed IS NULL THEN
        BEGIN
            -- where the session's own search_path puts it, as online: pg_cron serves the whole database
            SET LOCAL search_path TO DEFAULT;
            CREATE EXTENSION IF NOT EXISTS pg_cron;
            PERFORM set_config('search_path', v_search_path, true);
            {{record_owned}};
            RAISE NOTICE 'created pg_cron in this database';
        EXCEPTION WHEN OTHERS THEN
            v_refused := SQLERRM;
        END;
        IF v_refused IS NOT NULL THEN
            v_missing := v_refused LIKE ANY ({{missing_markers}});
            v_problem := format(c_texts ->> CASE WHEN v_missing THEN 'refused_missing' ELSE 'refused' END,
                                v_cron_db, v_refused);
        END IF;
    END IF;
    IF v_problem IS NOT NULL THEN
        v_message := format(c_texts ->> CASE WHEN v_missing THEN 'missing' ELSE 'unusable' END, v_problem);
    END IF;
    IF v_message IS NOT NULL THEN
        IF c_mode = 'require' THEN
            RAISE EXCEPTION '%', format(c_texts ->> 'failure', v_message);
        END IF;
        RAISE NOTICE '%', format(c_texts ->> 'warning', v_message);
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock({{names_lock_key}});  -- job names are chosen one upgrade at a time
    FOR v_job IN SELECT * FROM jsonb_to_recordset({{jobs}}) AS j(job text, base text, schedule text, command text)
    LOOP
        -- the plain name when it is free or already this database's job; else name:database
        v_qualified := v_job.base || ':' || current_database();
        IF octet_length(v_qualified) > 63 THEN
            v_qualified := v_job.base || ':' || left(encode(sha256(convert_to(current_database(), 'UTF8')), 'hex'), 16);
        END IF;
        SELECT j.jobname INTO v_name FROM cron.job j
        WHERE j.jobname IN (v_job.base, v_qualified) AND j.database = current_database()
        ORDER BY j.jobname = v_job.base DESC LIMIT 1;
        IF v_name IS NULL THEN
            v_name := CASE WHEN EXISTS (SELECT 1 FROM cron.job j WHERE j.jobname = v_job.base) THEN v_qualified
                           ELSE v_job.base END;
        END IF;
        v_schedule := coalesce(v_job.schedule, (SELECT cleanup_schedule FROM task_hygiene_settings));
        v_command := coalesce(v_job.command, format('CALL @schema@.taskdb_cancel_stale_queued_all(%L)', 'pg_cron job ' || v_name));
        SELECT j.jobid INTO v_jobid FROM cron.job j
        WHERE j.jobname = v_name AND j.schedule = v_schedule AND j.command = v_command;
        IF v_jobid IS NULL THEN
            v_jobid := cron.schedule(v_name, v_schedule, v_command);
        END IF;
        SELECT j.database INTO v_database FROM cron.job j WHERE j.jobid = v_jobid;
        IF v_database IS DISTINCT FROM current_database() THEN
            RAISE EXCEPTION 'pg_cron stored job % for database %, not %', v_name, v_database, current_database();
        END IF;
        {{record_job}};
        RAISE NOTICE 'pg_cron job % scheduled (%) in this database', v_name, v_schedule;
        v_name := NULL;
    END LOOP;
END
$taskdb$;

-- downgrade_guard --
-- A downgrade script: the database must be at the revision it starts from, or at one it downgrades through
-- (a rerun after a failure, or after it finished: then every step finds nothing left to do).
DO $taskdb$
DECLARE
    v_allowed CONSTANT text[] := {{allowed}};
    v_current text;
BEGIN
    IF to_regclass({{version_table_literal}}) IS NOT NULL THEN
        SELECT string_agg(version_num, ', ') INTO v_current FROM {{version_table}};
    END IF;
    IF to_regclass({{version_table_literal}}) IS NULL THEN
        RAISE EXCEPTION 'this script downgrades % -> %, but the database has no % table: taskdb never upgraded '
            'it (or it records its revision under another name: generate with TASKDB_VERSION_TABLE); nothing was '
            'changed', {{start}}, {{dest}}, {{version_table_literal}};
    ELSIF v_current IS NULL AND NOT {{to_base}} THEN
        RAISE EXCEPTION 'this script downgrades % -> % but the database has no taskdb revision: nothing to '
            'downgrade', {{start}}, {{dest}};
    ELSIF v_current IS NOT NULL AND NOT v_current = ANY (v_allowed) THEN
        RAISE EXCEPTION 'this script downgrades % -> %, but the database is at revision %: generate the '
            'script for its range with `taskdb sql --downgrade %:%`', {{start}}, {{dest}}, v_current, v_current,
            {{dest}};
    END IF;
END
$taskdb$;

-- restore_procedure --
-- The downgrade's restore (src/taskdb/backfill.py restore) as a procedure of this session: the actor's logged
-- changes put back in keyset batches over task ids, each batch THE SAME statement (restore_batch of
-- src/taskdb/sql/backfill.sql: a column is restored only where it still holds what the actor wrote), committed
-- on its own, one NOTICE per batch. Idempotent: a restored column no longer matches. A batch that waited longer
-- than the session's lock_timeout is retried (pg_temp.taskdb_lock_wait, p_lock_attempts attempts), as online.
-- CALL it outside a transaction block (it COMMITs).
CREATE OR REPLACE PROCEDURE pg_temp.taskdb_restore(
    p_actor text,
    p_batch_size integer DEFAULT 1000,
    p_lock_attempts integer DEFAULT {{lock_attempts}}  -- the LockPolicy's (TASKDB_LOCK_ATTEMPTS when generated)
)
LANGUAGE plpgsql AS $taskdb_restore$
DECLARE
    c_restore_batch CONSTANT text := {{restore_batch}};
    v_statement text;
    v_after uuid;
    v_batch record;
    v_total bigint := 0;
    v_attempt integer;
    v_attempt_started timestamptz;
BEGIN
    IF to_regclass('task_hygiene_log') IS NULL THEN
        RETURN;  -- nothing was logged (or an earlier run of this script already dropped the log)
    END IF;
    SELECT replace(c_restore_batch, '${status_type}', format_type(a.atttypid, a.atttypmod)) INTO STRICT v_statement
    FROM pg_attribute a WHERE a.attrelid = 'tasks'::regclass AND a.attname = 'status' AND NOT a.attisdropped;
    LOOP
        v_attempt := 1;
        LOOP  -- attempts at one batch: only lock_not_available is retried
            v_attempt_started := clock_timestamp();
            BEGIN
                EXECUTE v_statement INTO v_batch USING {{restore_using}};
                EXIT;
            EXCEPTION WHEN lock_not_available THEN
                PERFORM pg_temp.taskdb_lock_wait(format('restore %s batch', p_actor), v_attempt, p_lock_attempts,
                    v_attempt_started, 'the script is idempotent');
                v_attempt := v_attempt + 1;
            END;
        END LOOP;
        COMMIT;
        EXIT WHEN v_batch.scanned = 0;
        v_after := v_batch.last_id;
        v_total := v_total + v_batch.restored;
        RAISE NOTICE 'restore %: % tasks restored so far', p_actor, v_total;
    END LOOP;
END
$taskdb_restore$;

-- restore_call --
SET lock_timeout = {{lock_timeout}};
SET statement_timeout = 0;
CALL pg_temp.taskdb_restore({{actor}}, {{batch_size}});
RESET statement_timeout;
RESET lock_timeout;

-- drop_owned --
-- Undo what revision {{revision}} recorded as its own in taskdb_owned_objects (taskdb.constraints.drop_owned,
-- taskdb.adopt.drop_added_columns / drop_created_tables): of the kinds {{kinds}}, NOT NULLs, then constraints,
-- columns and tables, newest first; a table that holds rows is kept with a NOTICE (its rows are not taskdb's to
-- delete). Adopted objects were never recorded, so they stay. Indexes are dropped by index_drop (CONCURRENTLY).
DO $taskdb$
DECLARE
    v_owned record;
    v_table text;
    v_name text;
    v_rows boolean;
BEGIN
    IF to_regclass('taskdb_owned_objects') IS NULL THEN
        RETURN;
    END IF;
    FOR v_owned IN SELECT kind, name FROM taskdb_owned_objects
                   WHERE revision = {{revision}} AND kind = ANY ({{kinds}})
                   ORDER BY array_position(ARRAY['not_null', 'constraint', 'column', 'table'], kind), seq DESC
    LOOP
        v_table := split_part(v_owned.name, '.', 1);
        v_name := substr(v_owned.name, length(v_table) + 2);
        IF v_owned.kind = 'not_null' AND EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass(v_table)
                                                 AND attname = v_name AND NOT attisdropped) THEN
            EXECUTE format('ALTER TABLE %I ALTER COLUMN %I DROP NOT NULL', v_table, v_name);
        ELSIF v_owned.kind = 'constraint' AND to_regclass(v_table) IS NOT NULL THEN
            EXECUTE format('ALTER TABLE %I DROP CONSTRAINT IF EXISTS %I', v_table, v_name);
        ELSIF v_owned.kind = 'column' AND to_regclass(v_table) IS NOT NULL THEN
            EXECUTE format('ALTER TABLE %I DROP COLUMN IF EXISTS %I', v_table, v_name);
        ELSIF v_owned.kind = 'table' AND to_regclass(format('%I', v_owned.name)) IS NOT NULL THEN
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I)', v_owned.name) INTO v_rows;
            IF v_rows THEN
                RAISE NOTICE 'keeping table %: it holds rows taskdb did not create; drop it by hand if you mean to',
                    v_owned.name;
                CONTINUE;  -- kept: forgotten below with the other tables, as the online downgrade does
            END IF;
            EXECUTE format('DROP TABLE %I', v_owned.name);
        END IF;
        IF v_owned.kind <> 'table' THEN
            DELETE FROM taskdb_owned_objects WHERE kind = v_owned.kind AND name = v_owned.name;
        END IF;
    END LOOP;
    DELETE FROM taskdb_owned_objects WHERE revision = {{revision}} AND kind = 'table' AND kind = ANY ({{kinds}});
    IF 'table' = ANY ({{kinds}}) AND NOT EXISTS (SELECT 1 FROM taskdb_owned_objects) THEN
        DROP TABLE taskdb_owned_objects;
    END IF;
END
$taskdb$;

-- index_mark --
-- An index revision {{revision}} created (not one it adopted: that was never recorded) is renamed for the drop
-- below, so that a plain `DROP INDEX CONCURRENTLY IF EXISTS` drops it and nothing else (renaming an index takes
-- SHARE UPDATE EXCLUSIVE: writes go on).
DO $taskdb$
BEGIN
    IF to_regclass({{name_literal}}) IS NULL OR to_regclass('taskdb_owned_objects') IS NULL THEN
        RETURN;  -- (a separate IF: taskdb_owned_objects is only planned where it exists)
    END IF;
    IF EXISTS (SELECT FROM taskdb_owned_objects
               WHERE kind = 'index' AND name = {{owned_name}} AND revision = {{revision}}) THEN
        ALTER INDEX {{name}} RENAME TO {{dropping}};
    END IF;
END
$taskdb$;

-- index_forget --
DO $taskdb$
BEGIN
    IF to_regclass('taskdb_owned_objects') IS NOT NULL AND to_regclass({{dropping_literal}}) IS NULL
       AND (to_regclass({{name_literal}}) IS NULL OR NOT EXISTS (
            SELECT FROM pg_index WHERE indexrelid = to_regclass({{name_literal}}))) THEN
        DELETE FROM taskdb_owned_objects WHERE kind = 'index' AND name = {{owned_name}} AND revision = {{revision}};
    END IF;
END
$taskdb$;

-- cron_unschedule --
-- taskdb's pg_cron jobs (taskdb.cron.unschedule_jobs): where pg_cron keeps its jobs in this database
-- (cron.database_name), this database's cleanup job goes, the purge job with the server's last cleanup job, and
-- pg_cron itself when taskdb created it and nothing else uses it (as a role that sees every job). A job recorded
-- in another cron database cannot be reached from here: the script stops before this step changes anything
-- (the job would go on calling functions this downgrade drops), saying to run `taskdb cron remove` first.
DO $taskdb$
DECLARE
    v_job record;
    v_found record;
    v_removed bigint[] := ARRAY[]::bigint[];
    v_owned text := {{extension_owner}};
BEGIN
    IF to_regclass('taskdb_cron_jobs') IS NULL THEN
        RETURN;
    END IF;
    FOR v_job IN SELECT * FROM taskdb_cron_jobs ORDER BY job LOOP
        IF v_job.cron_database IS DISTINCT FROM current_database() THEN
            RAISE EXCEPTION 'pg_cron job % lives in database %, which this script cannot reach; nothing was changed '
                'by this step: run `taskdb cron remove` (or there: SELECT cron.unschedule(jobid) FROM cron.job '
                'WHERE jobname = % AND database = %, then DELETE FROM taskdb_cron_jobs here), then rerun this script',
                v_job.jobname, v_job.cron_database, quote_literal(v_job.jobname), quote_literal(v_job.run_database);
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_cron') THEN
            CONTINUE;  -- pg_cron is gone from here: so are its jobs
        END IF;
        PERFORM pg_advisory_xact_lock({{names_lock_key}});
        SELECT j.jobid, j.database INTO v_found FROM cron.job j WHERE j.jobname = v_job.jobname;
        IF v_found.jobid IS NULL OR v_found.database IS DISTINCT FROM v_job.run_database THEN
            CONTINUE;  -- absent already
        END IF;
        IF v_job.job = {{purge_job}} AND EXISTS ({{cleanup_jobs}}) THEN
            CONTINUE;  -- kept: other databases' cleanup jobs still use it
        END IF;
        PERFORM cron.unschedule(v_found.jobid);
        v_removed := v_removed || v_found.jobid;
        RAISE NOTICE 'pg_cron job % unscheduled', v_job.jobname;
        v_found := NULL;
    END LOOP;
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_cron') OR to_regclass('taskdb_owned_objects') IS NULL
       OR NOT ({{sees_every_job}}) THEN
        RETURN;  -- no pg_cron here, or this role cannot see every user's jobs
    END IF;
    IF NOT EXISTS (SELECT 1 FROM taskdb_owned_objects WHERE kind = 'extension' AND name = v_owned
                   AND revision = {{revision}}) THEN
        RETURN;  -- not taskdb's to drop
    END IF;
    -- (a separate IF: cron.job is only planned where pg_cron is installed)
    IF NOT ({{pg_cron_in_use}}) THEN
        BEGIN
            DROP EXTENSION IF EXISTS pg_cron;
            DELETE FROM taskdb_owned_objects WHERE kind = 'extension' AND name = v_owned;
            RAISE NOTICE 'dropped pg_cron (taskdb had created it)';
        EXCEPTION WHEN OTHERS THEN  -- the jobs are gone already; an extension left behind harms nobody
            RAISE NOTICE 'kept pg_cron: DROP EXTENSION failed: %', SQLERRM;
        END;
    END IF;
END
$taskdb$;
