-- The backfill engine's queries (see taskdb/backfill.py for the algorithm). Every decision of a run (where it
-- starts or resumes, each batch, what a sweep did and which comes next, the window size, the end) is a statement
-- here, run as it is by the online engine (taskdb.backfill._run) and by the offline script's procedure
-- (pg_temp.taskdb_backfill in sql/offline.sql), which only loop, log, pace and retry around them.
--
-- Placeholders filled in by Python before execution:
--   ${needs_work_t} / ${needs_work_p}  the needs_work predicate below, for alias t / p
--   ${count_needs_work}, ...           another section of this file, as a subquery
--   ${status_type}                     the type of tasks.status: text, or the enum task_status
--   ${lock_clause}                     'SKIP LOCKED' in normal and final sweeps, '' when waiting for locked rows
-- Bind parameters: :after (keyset cursor, NULL = start), :batch_size, :actor (recorded in task_hygiene_log),
-- and the checkpoint's :job, :sweep, :mode (normal, final: flag rows still waiting for a parent, waiting).

-- needs_work --
-- A row the backfill has not finished: not flagged, and its status, user or run type is not yet right.
-- "status IS NULL" is needed on its own: NULL is not distinct from its (NULL) canonical form, so a nullable
-- status column's NULL on an otherwise healthy row was never flagged missing_status (found by
-- tests/faults/test_fuzz_legacy.py).
(${t}.legacy_reason IS NULL AND (
       ${t}.status IS NULL
    OR ${t}.status::text IS DISTINCT FROM taskdb_canonical_status(${t}.status::text)
    OR ${t}.run_type IS NULL OR ${t}.run_type NOT IN ('cloud', 'local')
    OR ${t}.user_id IS NULL
    OR NOT EXISTS (SELECT 1 FROM users u WHERE u.id = ${t}.user_id)))

-- count_needs_work --
-- The exact number of rows still to backfill or flag: the progress total and the done test.
SELECT count(*) FROM tasks t WHERE ${needs_work_t}

-- count_waiting_before --
-- A resumed sweep: the rows up to the crashed run's cursor (its part of the sweep) that still need work
-- and have an orchestrator task, i.e. the ones that waited for it there.
SELECT count(*) FROM tasks t
WHERE t.id <= CAST(:after AS uuid) AND ${needs_work_t}
  AND EXISTS (SELECT 1 FROM tasks p
              WHERE p.id = taskdb_try_uuid(t.params ->> 'orchestrator_task_id_ref') AND p.id <> t.id)

-- resolve_batch --
-- One keyset batch in one statement (so one transaction): derive what can be derived, flag what
-- cannot, log every changed value, and move the resumable cursor, all or nothing.
-- The batch is a window of the next batch_size ids (an index range on the primary key), and within it
-- the rows that need work. Asking instead for "the next batch_size rows that need work" lets the planner
-- guess few matches and seq-scan and sort the whole table on every batch (seen: 134 ms of 175 at 100k rows).
WITH window_ids AS (
    SELECT t.id
    FROM tasks t
    WHERE CAST(:after AS uuid) IS NULL OR t.id > CAST(:after AS uuid)
    ORDER BY t.id
    LIMIT :batch_size
),
bounds AS (  -- (uuid has no max())
    SELECT (SELECT count(*) FROM window_ids) AS size,
           (SELECT w.id FROM window_ids w ORDER BY w.id DESC LIMIT 1) AS upper
),
batch AS (
    -- Joined to the window itself (not "id between its bounds"): the planner then knows the batch is at
    -- most batch_size rows. With bounds it guessed 115,000 and hash-joined the whole table (1 s per batch).
    -- The columns are read here, from the row as locked: a row the application changed after this
    -- statement's snapshot is rechecked and returned in its latest version, so its new values (not the
    -- snapshot's) are what the batch derives from, logs as previous, and overwrites.
    SELECT t.id, t.status, t.user_id, t.run_type, t.error_message, t.params, t.project_id
    FROM window_ids w
    JOIN tasks t ON t.id = w.id
    WHERE ${needs_work_t}
    ORDER BY t.id
    FOR NO KEY UPDATE OF t ${lock_clause}
),
current_row AS (
    SELECT t.id, t.status::text AS status, t.user_id, t.run_type, t.error_message,
           taskdb_canonical_status(t.status::text) AS canonical_status,
           own_user.id AS own_user_id,
           project_user.id AS project_user_id,
           params_user.id AS params_user_id,
           taskdb_canonical_run_type(t.run_type) AS own_run_type,
           taskdb_canonical_run_type(t.params ->> 'run_type') AS params_run_type,
           parent.user_id AS parent_user_id,
           parent.run_type AS parent_run_type,
           coalesce(parent.pending, false) AS parent_pending
    FROM batch t
    LEFT JOIN users own_user ON own_user.id = t.user_id
    LEFT JOIN LATERAL (
        SELECT u.id FROM projects pr JOIN users u ON u.id = pr.user_id WHERE pr.id = t.project_id
    ) project_user ON true
    LEFT JOIN users params_user ON params_user.id = taskdb_try_uuid(t.params ->> 'user_id')
    -- The parent orchestrator task lends its user and run type only once it is healthy itself;
    -- while it still needs work the child waits for a later sweep (never for a self-reference).
    LEFT JOIN LATERAL (
        SELECT CASE WHEN NOT s.pending AND p.legacy_reason IS NULL THEN p.user_id END AS user_id,
               CASE WHEN NOT s.pending AND p.legacy_reason IS NULL THEN p.run_type END AS run_type,
               s.pending
        FROM tasks p
        CROSS JOIN LATERAL (SELECT ${needs_work_p} AS pending) s
        WHERE p.id = taskdb_try_uuid(t.params ->> 'orchestrator_task_id_ref') AND p.id <> t.id
    ) parent ON true
),
derived AS (
    SELECT c.*,
           coalesce(c.own_user_id, c.project_user_id, c.params_user_id, c.parent_user_id) AS new_user_id,
           coalesce(c.own_run_type, c.params_run_type, c.parent_run_type) AS new_run_type,
           concat_ws('; ',
               CASE WHEN c.canonical_status IS NOT NULL AND c.canonical_status <> c.status
                    THEN 'status normalised' END,
               CASE WHEN c.user_id IS NOT NULL AND c.own_user_id IS NULL
                    THEN 'user_id references no user' END,
               CASE WHEN c.own_user_id IS NOT NULL THEN NULL
                    WHEN c.project_user_id IS NOT NULL THEN 'user_id from the project owner'
                    WHEN c.params_user_id IS NOT NULL THEN 'user_id from params.user_id'
                    WHEN c.parent_user_id IS NOT NULL THEN 'user_id from the orchestrator task' END,
               CASE WHEN c.own_run_type IS NOT NULL
                    THEN CASE WHEN c.own_run_type <> c.run_type THEN 'run_type normalised' END
                    WHEN c.params_run_type IS NOT NULL THEN 'run_type from params.run_type'
                    WHEN c.parent_run_type IS NOT NULL THEN 'run_type from the orchestrator task' END
           ) AS notes
    FROM current_row c
),
verdict AS (
    SELECT d.*,
           -- Why the row cannot be made healthy; '' when it can. The vocabulary is the CHECK
           -- tasks_legacy_reason_known.
           concat_ws(',',
               CASE WHEN d.canonical_status IS NULL
                    THEN CASE WHEN d.status IS NULL THEN 'missing_status' ELSE 'invalid_status' END END,
               CASE WHEN d.new_user_id IS NULL
                    THEN CASE WHEN d.user_id IS NOT NULL THEN 'unknown_user' ELSE 'missing_user_id' END END,
               CASE WHEN d.new_run_type IS NULL
                    THEN CASE WHEN nullif(btrim(d.run_type), '') IS NULL THEN 'missing_run_type'
                              ELSE 'invalid_run_type' END END
           ) AS reasons
    FROM derived d
),
outcome AS (
    -- A row that cannot be made healthy yet waits for its pending orchestrator task, even when it will
    -- be flagged anyway (unknown status): so what it ends with never depends on batch boundaries.
    SELECT v.*,
           CASE WHEN v.reasons = '' THEN 'backfill'
                WHEN v.parent_pending AND CAST(:mode AS text) = 'normal' THEN 'wait'
                ELSE 'flag' END AS action
    FROM verdict v
),
new_values AS (
    -- Derived values are applied to every row; a flagged row keeps what cannot be derived as it was
    -- (an invalid run type stays for the DBA to read) and is never left Queued.
    SELECT o.id, o.action, o.status AS old_status, o.user_id AS old_user_id, o.run_type AS old_run_type,
           o.error_message AS old_error_message,
           CASE WHEN o.action = 'flag' AND (o.canonical_status IS NULL OR o.canonical_status = 'Queued')
                THEN 'Cancelled' ELSE o.canonical_status END AS status,
           o.new_user_id AS user_id,
           coalesce(o.new_run_type, o.run_type) AS run_type,
           CASE WHEN o.action = 'flag' AND (o.canonical_status IS NULL OR o.canonical_status = 'Queued')
                THEN 'Cancelled by taskdb (' || :actor || '): legacy row flagged ' || o.reasons
                     || ' while its status was ' || coalesce(quote_literal(o.status), 'NULL')
                ELSE o.error_message END AS error_message,
           nullif(o.reasons, '') AS legacy_reason,
           CASE WHEN o.action = 'flag' THEN concat_ws('; ', 'flagged ' || o.reasons, nullif(o.notes, ''))
                ELSE o.notes END AS notes
    FROM outcome o
    WHERE o.action <> 'wait'
),
changes AS (
    SELECT n.*,
           n.status IS DISTINCT FROM n.old_status AS status_changed,
           n.user_id IS DISTINCT FROM n.old_user_id AS user_id_changed,
           n.run_type IS DISTINCT FROM n.old_run_type AS run_type_changed,
           n.error_message IS DISTINCT FROM n.old_error_message AS error_message_changed,
           n.legacy_reason IS NOT NULL AS legacy_reason_changed
    FROM new_values n
),
changed AS (
    SELECT c.* FROM changes c
    WHERE c.status_changed OR c.user_id_changed OR c.run_type_changed OR c.error_message_changed
       OR c.legacy_reason_changed
),
logged AS (
    -- previous: each changed column's value before (JSON null for a filled NULL); applied: after.
    -- Built with plain CASEs: an aggregate over the changed keys per row cost ~10 us a row.
    INSERT INTO task_hygiene_log (task_id, action, reason, previous, applied, actor)
    SELECT c.id, c.action, coalesce(nullif(c.notes, ''), c.action),
           CASE WHEN c.status_changed THEN jsonb_build_object('status', c.old_status) ELSE '{}' END
           || CASE WHEN c.user_id_changed THEN jsonb_build_object('user_id', c.old_user_id) ELSE '{}' END
           || CASE WHEN c.run_type_changed THEN jsonb_build_object('run_type', c.old_run_type) ELSE '{}' END
           || CASE WHEN c.error_message_changed
                   THEN jsonb_build_object('error_message', c.old_error_message) ELSE '{}' END
           || CASE WHEN c.legacy_reason_changed THEN '{"legacy_reason": null}'::jsonb ELSE '{}' END,
           CASE WHEN c.status_changed THEN jsonb_build_object('status', c.status) ELSE '{}' END
           || CASE WHEN c.user_id_changed THEN jsonb_build_object('user_id', c.user_id) ELSE '{}' END
           || CASE WHEN c.run_type_changed THEN jsonb_build_object('run_type', c.run_type) ELSE '{}' END
           || CASE WHEN c.error_message_changed
                   THEN jsonb_build_object('error_message', c.error_message) ELSE '{}' END
           || CASE WHEN c.legacy_reason_changed
                   THEN jsonb_build_object('legacy_reason', c.legacy_reason) ELSE '{}' END,
           :actor
    FROM changed c
),
updated AS (
    UPDATE tasks t
    SET status = CAST(c.status AS ${status_type}),
        user_id = c.user_id,
        run_type = c.run_type,
        error_message = c.error_message,
        legacy_reason = c.legacy_reason
    FROM changed c
    WHERE t.id = c.id
    RETURNING t.id
),
moved AS (
    INSERT INTO taskdb_backfill_progress AS p (job, sweep, mode, last_id, rows_done, updated_at)
    SELECT :job, :sweep, :mode, b.upper, (SELECT count(*) FROM updated), clock_timestamp()
    FROM bounds b WHERE b.size > 0
    ON CONFLICT (job) DO UPDATE
    SET sweep = EXCLUDED.sweep, mode = EXCLUDED.mode, last_id = EXCLUDED.last_id,
        rows_done = p.rows_done + EXCLUDED.rows_done, updated_at = EXCLUDED.updated_at
)
-- scanned: ids in the window (0 = the sweep is over); last_id: the window's end, the next cursor.
SELECT (SELECT size FROM bounds) AS scanned,
       (SELECT upper FROM bounds) AS last_id,
       (SELECT count(*) FROM updated) AS done,
       (SELECT count(*) FROM changes WHERE action = 'flag') AS flagged,
       (SELECT count(*) FROM outcome WHERE action = 'wait') AS waiting

-- begin_job --
-- A run of a job starts: the rows that need work (total: the progress total), and the sweep to run, from the
-- checkpoint (taskdb_backfill_progress). A run that crashed resumes (resumed) in its sweep, after the last id it
-- committed (last_id; NULL: none yet in that sweep); nothing is redone, and redoing would change nothing. A finished job with nothing left to do keeps its
-- record (e.g. a rerun after a crash before the version table moved); else the job starts anew: sweep 1, normal.
WITH total AS (
    ${count_needs_work}
),
found AS (
    SELECT p.sweep, p.mode, p.last_id, p.finished_at FROM taskdb_backfill_progress p WHERE p.job = :job
),
started AS (
    INSERT INTO taskdb_backfill_progress AS p (job, sweep, mode)
    SELECT :job, 1, 'normal'
    WHERE NOT EXISTS (SELECT FROM found f WHERE f.finished_at IS NULL OR (SELECT count FROM total) = 0)
    ON CONFLICT (job) DO UPDATE
    SET sweep = 1, mode = 'normal', last_id = NULL, rows_done = 0, started_at = clock_timestamp(),
        updated_at = clock_timestamp(), finished_at = NULL
    RETURNING p.sweep, p.mode
)
SELECT (SELECT count FROM total) AS total,
       coalesce(s.sweep, f.sweep) AS sweep,
       coalesce(s.mode, f.mode) AS mode,
       s.sweep IS NULL AND f.finished_at IS NULL AS resumed,
       CASE WHEN s.sweep IS NULL AND f.finished_at IS NULL THEN f.last_id END AS last_id
FROM (SELECT) one
LEFT JOIN found f ON true
LEFT JOIN started s ON true

-- next_size --
-- The next batch window: batch_size ids, scaled after a batch that took elapsed_ms towards target_batch_ms
-- (0: a fixed size), at most x2 or /2 a step, within min_batch_size..max_batch_size. A batch holds its rows'
-- locks until it commits, so its duration bounds how long an application UPDATE of one of them can wait.
SELECT CASE WHEN CAST(:target_batch_ms AS double precision) = 0 THEN CAST(:batch_size AS integer)
            ELSE CAST(trunc(least(greatest(least(greatest(
                     CAST(:batch_size AS double precision) * CAST(:target_batch_ms AS double precision)
                     / greatest(CAST(:elapsed_ms AS double precision), 1),
                     CAST(:batch_size AS double precision) / 2), CAST(:batch_size AS double precision) * 2),
                 CAST(:min_batch_size AS integer)), CAST(:max_batch_size AS integer))) AS integer)
       END AS size

-- end_sweep --
-- A sweep is over: what it did, what remains, and which sweep comes next.
-- Binds done and waiting: the rows this run backfilled or flagged in the sweep, and those that waited for their parent.
-- Bind after: the cursor the run resumed the sweep after (NULL: it ran the whole sweep); the crashed run's part of the
-- sweep counts too, so that a resumed run sweeps exactly as an uninterrupted one: the checkpoint's rows_done counts
-- every row of the sweep, and count_waiting_before the rows up to the cursor that waited there.
-- Bind previous_waiting: the waiting of the sweep before (NULL: none, or this run did not see it).
-- next_mode: the next sweep's mode; NULL when the job is over (nothing remains, or left_over).
WITH swept AS (
    SELECT CASE WHEN CAST(:after AS uuid) IS NULL THEN CAST(:done AS bigint)
                ELSE (SELECT p.rows_done FROM taskdb_backfill_progress p WHERE p.job = :job) END AS done,
           CAST(:waiting AS bigint)
           + CASE WHEN CAST(:after AS uuid) IS NULL THEN 0 ELSE (${count_waiting_before}) END AS waiting,
           (${count_needs_work}) AS remaining
)
SELECT s.done, s.waiting, s.remaining,
       CASE WHEN s.remaining = 0 OR CAST(:mode AS text) = 'waiting' THEN NULL
            -- More normal sweeps while children keep finding healthy parents (fewer wait each time: rows an old
            -- application keeps writing are done in every sweep, so `done` alone is no progress, seen: 49
            -- sweeps); then flag the rest; then wait for the rows that workers held locked.
            WHEN CAST(:mode AS text) = 'normal' AND s.waiting > 0 AND s.done > 0
                 AND s.waiting < coalesce(CAST(:previous_waiting AS bigint), s.waiting + 1)
                 AND CAST(:sweep AS integer) < CAST(:max_sweeps AS integer) - 1 THEN 'normal'
            WHEN CAST(:mode AS text) = 'normal' THEN 'final'
            ELSE 'waiting' END AS next_mode,
       -- A waiting sweep finishes every row that existed when it began (it waits for locked ones): what remains
       -- was written during it, e.g. by an old application version. Sweeping again would only chase new writes
       -- with a whole-table scan each time (seen: 50 sweeps while an old app kept writing); 0004's catch-up
       -- takes them, behind its write guard that lets no new one in.
       CAST(:mode AS text) = 'waiting' AND s.remaining > 0 AS left_over
FROM swept s

-- next_sweep --
-- The checkpoint moves to the next sweep, in end_sweep's next_mode: its rows_done counts that sweep's rows.
UPDATE taskdb_backfill_progress
SET sweep = :sweep, mode = :mode, last_id = NULL, rows_done = 0, updated_at = clock_timestamp()
WHERE job = :job

-- finish_job --
UPDATE taskdb_backfill_progress SET finished_at = clock_timestamp() WHERE job = :job

-- logged_values --
-- Per task (the log rows l, grouped by task), each restorable column's value before the first logged change and
-- after the last: the select list of restore_history's history and of restore_preview's earlier.
(array_agg(l.previous -> 'status' ORDER BY l.id) FILTER (WHERE l.previous -> 'status' IS NOT NULL))[1] AS status_before,
(array_agg(l.applied -> 'status' ORDER BY l.id DESC) FILTER (WHERE l.applied -> 'status' IS NOT NULL))[1] AS status_after,
(array_agg(l.previous -> 'user_id' ORDER BY l.id) FILTER (WHERE l.previous -> 'user_id' IS NOT NULL))[1] AS user_id_before,
(array_agg(l.applied -> 'user_id' ORDER BY l.id DESC) FILTER (WHERE l.applied -> 'user_id' IS NOT NULL))[1] AS user_id_after,
(array_agg(l.previous -> 'run_type' ORDER BY l.id) FILTER (WHERE l.previous -> 'run_type' IS NOT NULL))[1] AS run_type_before,
(array_agg(l.applied -> 'run_type' ORDER BY l.id DESC) FILTER (WHERE l.applied -> 'run_type' IS NOT NULL))[1] AS run_type_after,
(array_agg(l.previous -> 'error_message' ORDER BY l.id) FILTER (WHERE l.previous -> 'error_message' IS NOT NULL))[1] AS error_message_before,
(array_agg(l.applied -> 'error_message' ORDER BY l.id DESC) FILTER (WHERE l.applied -> 'error_message' IS NOT NULL))[1] AS error_message_after,
(array_agg(l.previous -> 'legacy_reason' ORDER BY l.id) FILTER (WHERE l.previous -> 'legacy_reason' IS NOT NULL))[1] AS legacy_reason_before,
(array_agg(l.applied -> 'legacy_reason' ORDER BY l.id DESC) FILTER (WHERE l.applied -> 'legacy_reason' IS NOT NULL))[1] AS legacy_reason_after,
(array_agg(l.previous -> 'updated_at' ORDER BY l.id) FILTER (WHERE l.previous -> 'updated_at' IS NOT NULL))[1] AS updated_at_before,
(array_agg(l.applied -> 'updated_at' ORDER BY l.id DESC) FILTER (WHERE l.applied -> 'updated_at' IS NOT NULL))[1] AS updated_at_after

-- restore_history --
-- What one actor changed in a batch of tasks (the next :batch_size task ids after :after in its log rows):
-- per task and column, the value before the actor's first change and after its last. Shared by restore_batch
-- and restore_preview (`taskdb downgrade --plan`), which therefore read the same batches.
batch AS (
    SELECT DISTINCT l.task_id
    FROM task_hygiene_log l
    WHERE l.actor = :actor AND (CAST(:after AS uuid) IS NULL OR l.task_id > CAST(:after AS uuid))
    ORDER BY l.task_id
    LIMIT :batch_size
),
history AS (
    SELECT l.task_id,
           ${logged_values}
    FROM task_hygiene_log l
    JOIN batch USING (task_id)
    WHERE l.actor = :actor
    GROUP BY l.task_id
)

-- restores --
-- Whether the restore puts a column of task t back (h: its restore_history row): the actor changed it, and it
-- still holds the value the actor last wrote (a later change by the application wins). One `column: condition`
-- line each, filled into restore_batch and restore_preview as restores_<column> placeholders.
status: h.status_before IS NOT NULL AND t.status::text IS NOT DISTINCT FROM (h.status_after #>> '{}')
user_id: h.user_id_before IS NOT NULL AND t.user_id IS NOT DISTINCT FROM CAST(h.user_id_after #>> '{}' AS uuid)
run_type: h.run_type_before IS NOT NULL AND t.run_type IS NOT DISTINCT FROM (h.run_type_after #>> '{}')
error_message: h.error_message_before IS NOT NULL AND t.error_message IS NOT DISTINCT FROM (h.error_message_after #>> '{}')
legacy_reason: h.legacy_reason_before IS NOT NULL AND t.legacy_reason IS NOT DISTINCT FROM (h.legacy_reason_after #>> '{}')
updated_at: h.updated_at_before IS NOT NULL AND t.updated_at IS NOT DISTINCT FROM CAST(h.updated_at_after #>> '{}' AS timestamptz)

-- restored_values --
-- The value a restore puts back in each column (h: the restore_history row), one `column: expression` line each,
-- filled in as restored_<column> placeholders.
status: CAST(h.status_before #>> '{}' AS ${status_type})
user_id: CAST(h.user_id_before #>> '{}' AS uuid)
run_type: h.run_type_before #>> '{}'
error_message: h.error_message_before #>> '{}'
legacy_reason: h.legacy_reason_before #>> '{}'
updated_at: CAST(h.updated_at_before #>> '{}' AS timestamptz)

-- restore_batch --
-- Downgrade: put back, per task and column, the value from before this actor's first change, where
-- its restores condition says so; a task with nothing to put back is left alone (not even rewritten).
-- Idempotent: a restored column no longer matches, so a rerun skips it.
WITH ${restore_history},
restored AS (
    UPDATE tasks t
    SET status = CASE WHEN ${restores_status} THEN ${restored_status} ELSE t.status END,
        user_id = CASE WHEN ${restores_user_id} THEN ${restored_user_id} ELSE t.user_id END,
        run_type = CASE WHEN ${restores_run_type} THEN ${restored_run_type} ELSE t.run_type END,
        error_message = CASE WHEN ${restores_error_message} THEN ${restored_error_message} ELSE t.error_message END,
        legacy_reason = CASE WHEN ${restores_legacy_reason} THEN ${restored_legacy_reason} ELSE t.legacy_reason END,
        updated_at = CASE WHEN ${restores_updated_at} THEN ${restored_updated_at} ELSE t.updated_at END
    FROM history h
    WHERE t.id = h.task_id AND (${restores_any})
    RETURNING t.id
)
SELECT (SELECT count(*) FROM batch) AS scanned,
       (SELECT task_id FROM batch ORDER BY task_id DESC LIMIT 1) AS last_id,
       (SELECT count(*) FROM restored) AS restored

-- restore_preview --
-- `taskdb downgrade --plan`: what restore_batch would put back in the same batch, changing nothing. The actors
-- :earlier are the ones the same downgrade restores before this one: t is each task as it will be after their
-- restores (the same conditions and values, applied to the tasks here; their changes taken together, the oldest
-- value before and the newest after, which is exact where they changed a column one after another, as the
-- revisions do), so that a task two revisions changed is counted as the downgrade will really find it. tasks: tasks with at least one column to restore; kept: tasks
-- the actor changed whose values all changed since (the application's win); gone: tasks the actor changed that
-- no longer exist; then one count per column.
WITH ${restore_history},
earlier AS (
    SELECT l.task_id,
           ${logged_values}
    FROM task_hygiene_log l
    JOIN batch USING (task_id)
    WHERE l.actor = ANY (CAST(:earlier AS text[]))
    GROUP BY l.task_id
),
t AS (
    SELECT t.id,
           CASE WHEN ${earlier_restores_status} THEN ${earlier_restored_status} ELSE t.status::text END AS status,
           CASE WHEN ${earlier_restores_user_id} THEN ${earlier_restored_user_id} ELSE t.user_id END AS user_id,
           CASE WHEN ${earlier_restores_run_type} THEN ${earlier_restored_run_type} ELSE t.run_type END AS run_type,
           CASE WHEN ${earlier_restores_error_message} THEN ${earlier_restored_error_message}
                ELSE t.error_message END AS error_message,
           CASE WHEN ${earlier_restores_legacy_reason} THEN ${earlier_restored_legacy_reason}
                ELSE t.legacy_reason END AS legacy_reason,
           CASE WHEN ${earlier_restores_updated_at} THEN ${earlier_restored_updated_at}
                ELSE t.updated_at END AS updated_at
    FROM tasks t
    JOIN batch b ON b.task_id = t.id
    LEFT JOIN earlier e ON e.task_id = t.id
)
SELECT (SELECT count(*) FROM batch) AS scanned,
       (SELECT task_id FROM batch ORDER BY task_id DESC LIMIT 1) AS last_id,
       count(t.id) FILTER (WHERE ${restores_any}) AS tasks,
       count(t.id) FILTER (WHERE NOT (${restores_any})) AS kept,
       count(*) FILTER (WHERE t.id IS NULL) AS gone,
       count(t.id) FILTER (WHERE ${restores_status}) AS status,
       count(t.id) FILTER (WHERE ${restores_user_id}) AS user_id,
       count(t.id) FILTER (WHERE ${restores_run_type}) AS run_type,
       count(t.id) FILTER (WHERE ${restores_error_message}) AS error_message,
       count(t.id) FILTER (WHERE ${restores_legacy_reason}) AS legacy_reason,
       count(t.id) FILTER (WHERE ${restores_updated_at}) AS updated_at
FROM history h
LEFT JOIN t ON t.id = h.task_id
