-- The SQL of `taskdb sql` (Alembic --sql mode): static SQL a DBA reviews and applies with
-- `psql -v ON_ERROR_STOP=1 -X -f upgrade.sql`, that adapts to the database at RUN time (DO blocks read
-- the catalog), so that it does on every starting state what the online upgrade does, and a rerun finishes
-- or repeats nothing.
--
-- {{name}} placeholders are filled by src/taskdb/offline.py when the script is generated (literals already
-- quoted). ${status_type} and ${lock_clause} stay in the backfill's batch statement: the procedure fills them
-- at run time (the generator cannot know whether tasks.status is text or an enum).

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

-- check_shapes --
-- Each existing table must have the columns taskdb relies on, of an accepted type, and a unique key; else
-- stop before anything changes, with the online upgrade's message (taskdb.adopt.check_shape).
DO $taskdb$
DECLARE
    -- [{table, unique_key, columns: [{name, required, types: [...]}]}], from the revision
    v_specs CONSTANT jsonb := {{specs}};
    v_spec jsonb;
    v_col jsonb;
    v_type text;
    v_is_enum boolean;
BEGIN
    FOR v_spec IN SELECT s FROM jsonb_array_elements(v_specs) AS s LOOP
        CONTINUE WHEN to_regclass(v_spec ->> 'table') IS NULL;  -- absent: created below
        FOR v_col IN SELECT c FROM jsonb_array_elements(v_spec -> 'columns') AS c LOOP
            v_type := NULL;
            SELECT format_type(a.atttypid, a.atttypmod), t.typtype = 'e' INTO v_type, v_is_enum
            FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
            WHERE a.attrelid = to_regclass(v_spec ->> 'table') AND a.attname = v_col ->> 'name'
              AND a.attnum > 0 AND NOT a.attisdropped;
            IF v_type IS NULL THEN
                CONTINUE WHEN NOT (v_col ->> 'required')::boolean;
                RAISE EXCEPTION 'table %, column %: missing (taskdb needs it); nothing was changed',
                    quote_literal(v_spec ->> 'table'), quote_literal(v_col ->> 'name');
            END IF;
            IF NOT (v_col -> 'types' ? btrim(split_part(v_type, '(', 1)) OR (v_is_enum AND v_col -> 'types' ? '<enum>'))
            THEN
                RAISE EXCEPTION 'table %, column %: has type %, taskdb needs one of %; nothing was changed',
                    quote_literal(v_spec ->> 'table'), quote_literal(v_col ->> 'name'), v_type,
                    (SELECT string_agg(x, ', ') FROM jsonb_array_elements_text(v_col -> 'types') AS x);
            END IF;
        END LOOP;
        IF NOT EXISTS (
            SELECT 1 FROM pg_index i
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
            WHERE i.indrelid = to_regclass(v_spec ->> 'table') AND i.indisunique AND i.indisvalid
              AND i.indnatts = 1 AND i.indpred IS NULL AND a.attname = v_spec ->> 'unique_key')
        THEN
            RAISE EXCEPTION 'table %, column %: is not a primary key or unique (batches are keyed on it); '
                'nothing was changed', quote_literal(v_spec ->> 'table'), quote_literal(v_spec ->> 'unique_key');
        END IF;
    END LOOP;
END
$taskdb$;

-- create_table --
-- Created only where absent (an existing table is adopted as it is), and recorded as taskdb's.
DO $taskdb$
BEGIN
    IF to_regclass({{table_literal}}) IS NULL THEN
        {{create_sql}};
        {{record_owned}};
    END IF;
END
$taskdb$;

-- add_column --
-- Nullable and without a default: a catalog-only change. Recorded so that a downgrade drops only these.
DO $taskdb$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = {{table_literal}}::regclass
                   AND attname = {{column_literal}} AND attnum > 0 AND NOT attisdropped) THEN
        ALTER TABLE {{table}} ADD COLUMN {{column}} {{type}};
        {{record_owned}};
    END IF;
END
$taskdb$;

-- enum_labels --
-- Only where tasks.status is an enum: the canonical labels it lacks (PostgreSQL cannot drop enum labels).
DO $taskdb$
DECLARE
    v_type text;
    v_label text;
BEGIN
    SELECT format_type(a.atttypid, a.atttypmod) INTO v_type
    FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
    WHERE a.attrelid = 'tasks'::regclass AND a.attname = 'status' AND NOT a.attisdropped AND t.typtype = 'e';
    IF v_type IS NULL THEN
        RETURN;  -- status is text
    END IF;
    FOREACH v_label IN ARRAY {{labels}} LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_enum WHERE enumtypid = to_regtype(v_type) AND enumlabel = v_label);
        EXECUTE format('ALTER TYPE %s ADD VALUE IF NOT EXISTS %L', v_type, v_label);
        INSERT INTO taskdb_owned_objects (kind, name, revision) VALUES ('enum_label', v_type || '.' || v_label, {{revision}})
        ON CONFLICT (kind, name) DO NOTHING;
    END LOOP;
END
$taskdb$;

-- backfill_procedure --
-- The backfill engine of src/taskdb/backfill.py (run_backfill) as a procedure of this session: the same
-- sweeps (normal while children wait for their parents and progress is made, then final, then waiting for
-- rows workers held locked), the same checkpoint (taskdb_backfill_progress: a killed run resumes after the
-- last committed batch), and each batch THE SAME statement (resolve_batch of src/taskdb/sql/backfill.sql),
-- committed on its own. One NOTICE per batch. A batch is a window of p_batch_size ids that, with
-- p_target_batch_ms, grows or shrinks after every batch towards that duration (x2 or /2 at most, within
-- p_min_batch_size..p_max_batch_size: BackfillConfig.next_size). Lock waits are bounded by the session's
-- lock_timeout, with p_lock_attempts jittered retries per batch. CALL it outside a transaction block (it COMMITs).
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
    -- resolve_batch: bind parameters $1 after, $2 batch_size, $3 final, $4 actor, $5 job, $6 sweep, $7 mode
    c_resolve_batch CONSTANT text := {{resolve_batch}};
    c_count_needs_work CONSTANT text := {{count_needs_work}};
    c_count_waiting_before CONSTANT text := {{count_waiting_before}};  -- binds $1: the crashed run's cursor
    v_status_type text;
    v_skip_locked text;
    v_waiting_for_locks text;
    v_total bigint;
    v_remaining bigint;
    v_done_total bigint := 0;
    v_sweep integer;
    v_mode text;
    v_after uuid;
    v_finished timestamptz;
    v_done bigint;
    v_flagged bigint;
    v_waiting bigint;
    v_resumed uuid;  -- a crashed run committed this sweep's batches up to this id
    v_waited bigint;
    v_previous_waiting bigint;  -- children waiting in the last sweep: more normal sweeps only while fewer wait
    v_batch record;
    v_attempt integer;
    v_started timestamptz;
    v_elapsed_ms numeric;
    v_size integer := p_batch_size;
    v_blockers text;
BEGIN
    IF p_batch_size < 1 OR p_max_sweeps < 2 OR p_lock_attempts < 1 OR p_batch_delay < interval '0'
       OR p_target_batch_ms < 0 THEN
        RAISE EXCEPTION 'taskdb_backfill: batch_size >= 1, max_sweeps >= 2, lock_attempts >= 1, batch_delay >= 0, '
            'target_batch_ms >= 0';
    END IF;
    -- text, or the enum task_status: the batch casts the new status to it
    SELECT format_type(a.atttypid, a.atttypmod) INTO STRICT v_status_type
    FROM pg_attribute a WHERE a.attrelid = 'tasks'::regclass AND a.attname = 'status' AND NOT a.attisdropped;
    v_skip_locked := replace(replace(c_resolve_batch, '${status_type}', v_status_type), '${lock_clause}', 'SKIP LOCKED');
    v_waiting_for_locks := replace(replace(c_resolve_batch, '${status_type}', v_status_type), '${lock_clause}', '');

    EXECUTE c_count_needs_work INTO v_total;
    SELECT p.sweep, p.mode, p.last_id, p.finished_at INTO v_sweep, v_mode, v_after, v_finished
    FROM taskdb_backfill_progress p WHERE p.job = p_job;
    IF FOUND AND v_finished IS NOT NULL AND v_total = 0 THEN
        v_after := NULL;  -- finished, nothing new to do (a rerun): the job keeps its record
    ELSIF NOT FOUND OR v_finished IS NOT NULL THEN
        INSERT INTO taskdb_backfill_progress (job, sweep, mode) VALUES (p_job, 1, 'normal')
        ON CONFLICT (job) DO UPDATE SET sweep = 1, mode = 'normal', last_id = NULL, rows_done = 0,
            started_at = clock_timestamp(), updated_at = clock_timestamp(), finished_at = NULL;
        v_sweep := 1;
        v_mode := 'normal';
        v_after := NULL;
    ELSE
        RAISE NOTICE 'backfill %: resuming sweep % (%) after id %', p_job, v_sweep, v_mode, v_after;
    END IF;
    COMMIT;
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
                BEGIN
                    EXECUTE CASE WHEN v_mode = 'waiting' THEN v_waiting_for_locks ELSE v_skip_locked END
                    INTO STRICT v_batch
                    USING v_after, v_size, v_mode <> 'normal', p_actor, p_job, v_sweep, v_mode;
                    EXIT;
                EXCEPTION WHEN lock_not_available THEN
                    SELECT string_agg(format('pid %s (%s, %s, transaction open %s, holds %s on %s)', a.pid,
                                             coalesce(nullif(a.application_name, ''), 'no application_name'),
                                             a.state, date_trunc('second', now() - a.xact_start), l.mode,
                                             l.relation::regclass), '; ')
                    INTO v_blockers
                    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                    WHERE l.locktype = 'relation' AND l.granted AND l.pid <> pg_backend_pid()
                      AND l.relation = 'tasks'::regclass;
                    IF v_attempt >= p_lock_attempts THEN
                        RAISE EXCEPTION 'Failed after % attempts to take the lock for: backfill % batch (sweep %, %) '
                            '-- blocked by: %. Nothing half-done is left; rerun when the blocker is gone (the '
                            'backfill resumes from its checkpoint).', v_attempt, p_job, v_sweep, v_mode,
                            coalesce(v_blockers, 'no blocking session found any more')
                            USING ERRCODE = 'lock_not_available';
                    END IF;
                    RAISE WARNING 'lock not available for backfill % batch (attempt %/%), held by %; retrying',
                        p_job, v_attempt, p_lock_attempts, coalesce(v_blockers, 'nobody any more');
                    PERFORM pg_sleep(random() * least(10.0, 0.5 * 2 ^ (v_attempt - 1)));
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
            IF p_target_batch_ms > 0 THEN  -- the next window, scaled towards the target duration
                v_size := trunc(least(greatest(
                    least(greatest(v_size * p_target_batch_ms / greatest(v_elapsed_ms, 1), v_size / 2.0), v_size * 2.0),
                    p_min_batch_size), p_max_batch_size));
            END IF;
            IF p_batch_delay > interval '0' THEN
                PERFORM pg_sleep(extract(epoch FROM p_batch_delay)::float8);
            END IF;
        END LOOP;
        IF v_resumed IS NOT NULL THEN  -- the crashed run's part of the sweep counts too: its rows_done, its waiting rows
            SELECT p.rows_done INTO v_done FROM taskdb_backfill_progress p WHERE p.job = p_job;
            EXECUTE c_count_waiting_before INTO v_waited USING v_resumed;
            v_waiting := v_waiting + v_waited;
        END IF;
        EXECUTE c_count_needs_work INTO v_remaining;
        RAISE NOTICE 'backfill %: sweep % (%) done: % rows, % flagged, % waiting; % remaining',
            p_job, v_sweep, v_mode, v_done, v_flagged, v_waiting, v_remaining;
        EXIT WHEN v_remaining = 0;
        IF v_mode = 'waiting' THEN  -- what remains was written during that sweep: 0004's catch-up takes it
            RAISE WARNING 'backfill %: % rows written during the backfill still need work after % sweeps; the '
                'catch-up backfill of 0004_constraints (or a rerun) takes them', p_job, v_remaining, v_sweep;
            EXIT;
        END IF;
        -- More normal sweeps while children keep finding healthy parents; then flag the rest; then wait for
        -- the rows that workers held locked.
        -- (fewer children wait each time: rows an old application keeps writing make v_done > 0 every sweep)
        v_mode := CASE WHEN v_mode = 'normal' AND v_waiting > 0 AND v_done > 0 AND v_sweep < p_max_sweeps - 1
                            AND v_waiting < coalesce(v_previous_waiting, v_waiting + 1)
                       THEN 'normal'
                       WHEN v_mode = 'normal' THEN 'final'
                       ELSE 'waiting' END;
        v_previous_waiting := v_waiting;
        v_sweep := v_sweep + 1;
        v_after := NULL;
        -- the checkpoint of the new sweep: its rows_done counts this sweep's rows only
        UPDATE taskdb_backfill_progress SET sweep = v_sweep, mode = v_mode, last_id = NULL, rows_done = 0,
            updated_at = clock_timestamp() WHERE job = p_job;
        COMMIT;
    END LOOP;

    UPDATE taskdb_backfill_progress SET finished_at = clock_timestamp() WHERE job = p_job;
    COMMIT;
END
$taskdb_backfill$;

-- backfill_call --
-- Outside a transaction block (the procedure commits every batch); no statement_timeout for the whole run.
SET lock_timeout = {{lock_timeout}};
SET statement_timeout = 0;
-- every batch is short: JIT compiling it would cost more than it saves
SET jit = off;
CALL pg_temp.taskdb_backfill(
    p_job => {{job}}, p_actor => {{actor}},
    p_batch_size => {{batch_size}}, p_target_batch_ms => {{target_batch_ms}},
    p_min_batch_size => {{min_batch_size}}, p_max_batch_size => {{max_batch_size}},
    p_batch_delay => {{batch_delay}}, p_max_sweeps => {{max_sweeps}}, p_lock_attempts => {{lock_attempts}}
);
RESET jit;
RESET statement_timeout;
RESET lock_timeout;

-- add_constraint --
-- NOT VALID: no scan, a brief lock; from now on every insert and update must satisfy it. A constraint of
-- that name that already exists is adopted as it is (and not recorded as taskdb's).
DO $taskdb$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = {{table_literal}}::regclass AND conname = {{name_literal}}){{also}} THEN
        {{add_sql}};
        {{comment_sql}};
        {{record_owned}};
    END IF;
END
$taskdb$;

-- not_null_validate --
-- The temporary CHECK (col IS NOT NULL): validated, or dropped with a warning when rows hold NULL (taskdb
-- invents no values: the column stays nullable).
DO $taskdb$
DECLARE
    v_nulls bigint;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = {{table_literal}}::regclass AND attname = {{column_literal}}
               AND NOT attnotnull)
       AND EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = {{table_literal}}::regclass
                   AND conname = {{name_literal}} AND NOT convalidated) THEN
        BEGIN
            ALTER TABLE {{table}} VALIDATE CONSTRAINT {{name}};
        EXCEPTION WHEN check_violation THEN
            SELECT count(*) INTO v_nulls FROM {{table}} WHERE {{column}} IS NULL;
            ALTER TABLE {{table}} DROP CONSTRAINT IF EXISTS {{name}};
            RAISE WARNING '%.% stays nullable: % rows hold NULL and taskdb invents no values',
                {{table_literal}}, {{column_literal}}, v_nulls;
        END;
    END IF;
END
$taskdb$;

-- not_null_set --
-- With the CHECK validated, SET NOT NULL needs no scan (PostgreSQL 12+); then the CHECK goes.
DO $taskdb$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = {{table_literal}}::regclass AND attname = {{column_literal}}
               AND NOT attnotnull)
       AND EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = {{table_literal}}::regclass
                   AND conname = {{name_literal}} AND convalidated) THEN
        ALTER TABLE {{table}} ALTER COLUMN {{column}} SET NOT NULL;
        ALTER TABLE {{table}} DROP CONSTRAINT {{name}};
        {{record_owned}};
    END IF;
END
$taskdb$;

-- index_check --
-- A CREATE INDEX CONCURRENTLY that failed or was interrupted leaves an INVALID index, which IF NOT EXISTS
-- would keep: stop, and say how to repair it.
DO $taskdb$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = to_regclass({{name_literal}}) AND NOT indisvalid) THEN
        RAISE EXCEPTION 'index % is INVALID (an earlier build was interrupted): run DROP INDEX CONCURRENTLY %; '
            'then rerun this script, which builds it again', {{name_literal}}, {{name_literal}};
    END IF;
END
$taskdb$;

-- index_record --
-- Recorded as taskdb's before the build, so that an INVALID leftover is known to be ours. An index of that
-- name the database already had is adopted as it is.
INSERT INTO taskdb_owned_objects (kind, name, revision)
SELECT 'index', {{owned_name}}, {{revision}} WHERE to_regclass({{name_literal}}) IS NULL
ON CONFLICT (kind, name) DO NOTHING;

-- index_comment --
DO $taskdb$
BEGIN
    IF EXISTS (SELECT 1 FROM taskdb_owned_objects WHERE kind = 'index' AND name = {{owned_name}}) THEN
        COMMENT ON INDEX {{name}} IS {{comment}};
    END IF;
END
$taskdb$;

-- roles_and_grants --
-- The NOLOGIN group roles, where this role may create roles (roles are cluster-wide: no downgrade drops
-- them); the grants only when all of them exist.
DO $taskdb$
DECLARE
    v_may_create boolean := (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user);
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY {{roles}} LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_role);
        IF NOT v_may_create THEN
            RAISE WARNING 'role % does not exist and % may not create roles: grants skipped', v_role, current_user;
            RETURN;
        END IF;
        EXECUTE format('CREATE ROLE %I NOLOGIN', v_role);
        INSERT INTO taskdb_owned_objects (kind, name, revision) VALUES ('role', v_role, {{revision}})
        ON CONFLICT (kind, name) DO NOTHING;
    END LOOP;
{{grants}}
END
$taskdb$;

-- grants_if_role --
-- Where 0005 made the monitor role.
DO $taskdb$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {{role}}) THEN
{{grants}}
    END IF;
END
$taskdb$;

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
            v_message := format(c_texts ->> 'out_of_reach', v_cron_db);
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
-- on its own, one NOTICE per batch. Idempotent: a restored column no longer matches. Lock waits are bounded by
-- the session's lock_timeout. CALL it outside a transaction block (it COMMITs).
CREATE OR REPLACE PROCEDURE pg_temp.taskdb_restore(p_actor text, p_batch_size integer DEFAULT 1000)
LANGUAGE plpgsql AS $taskdb_restore$
DECLARE
    c_restore_batch CONSTANT text := {{restore_batch}};  -- its binds: {{restore_using}}
    v_statement text;
    v_after uuid;
    v_batch record;
    v_total bigint := 0;
BEGIN
    IF to_regclass('task_hygiene_log') IS NULL THEN
        RETURN;  -- nothing was logged (or an earlier run of this script already dropped the log)
    END IF;
    SELECT replace(c_restore_batch, '${status_type}', format_type(a.atttypid, a.atttypmod)) INTO STRICT v_statement
    FROM pg_attribute a WHERE a.attrelid = 'tasks'::regclass AND a.attname = 'status' AND NOT a.attisdropped;
    LOOP
        EXECUTE v_statement INTO v_batch USING {{restore_using}};
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
