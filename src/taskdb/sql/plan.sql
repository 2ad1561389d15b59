-- `taskdb plan`: what the pending upgrade will do to the rows, predicted by read-only queries.
--
-- The plan may run before revision 0003 created the helper functions and before 0002 added columns,
-- and in a READ ONLY transaction, which cannot create them. So the helpers appear here as inline
-- expressions (tests/unit and tests/integration/test_plan.py prove them equal to the functions and
-- the predictions equal to what the upgrade then does), and missing columns read as NULL.
--
-- Placeholders filled in by taskdb/plan.py (in the queries below, not in comments):
--   ${user_id} ${run_type} ${legacy_reason} ${dependant_on} ${project_id}   a column, or NULL of its type
--   ${project_owners}  (project_id, user_id): each project's owner who is a user (empty without a projects table)
--   ${users}           users, or an empty relation of the same shape when the table does not exist yet
-- Bind parameter :queued_ttl: the interval after which the cleanup at the end of 0005 cancels Queued tasks.
-- Inline helpers take their argument as ${x}: canonical_status, canonical_run_type, try_uuid.
--
-- Set-based, so that the time grows with the table, not with its square (issue 15: 550 s at 300,000 rows, 38x
-- the upgrade; now about a sixth of it, docs/benchmarks.md): every lookup is a join on one key (hashed or
-- merged), never a subquery per row inside an OR or an IN over a CTE (a CTE has no index: each such lookup
-- scanned it again), and the recursive CTEs walk only the rows that wait for their parent, or the Queued
-- children of cancelled rows. plan.py turns JIT and nested loops off for the summary (SUMMARY_SETTINGS).

-- canonical_status --
-- = taskdb_canonical_status(x); a canonical spelling (most rows) skips the regular expression, which costs
-- about a second per million rows.
(CASE WHEN ${x} IN ('Queued', 'In Progress', 'Complete', 'Failed', 'Cancelled') THEN ${x}
 ELSE CASE regexp_replace(lower(${x}), '[[:space:]_-]+', '', 'g')
    WHEN 'queued' THEN 'Queued'
    WHEN 'inprogress' THEN 'In Progress'
    WHEN 'complete' THEN 'Complete'
    WHEN 'failed' THEN 'Failed'
    WHEN 'cancelled' THEN 'Cancelled'
    WHEN 'canceled' THEN 'Cancelled'
END END)

-- canonical_run_type --
-- = taskdb_canonical_run_type(x); a canonical spelling skips the regular expression
(CASE WHEN ${x} IN ('cloud', 'local') THEN ${x}
 ELSE CASE lower(regexp_replace(${x}, '^[[:space:]]+|[[:space:]]+$', '', 'g'))
    WHEN 'cloud' THEN 'cloud'
    WHEN 'gpu' THEN 'cloud'
    WHEN 'local' THEN 'local'
END END)

-- try_uuid --
-- = taskdb_try_uuid(x)
(CASE WHEN ${x} ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$' THEN (${x})::uuid END)

-- predict --
-- One row per task with what the upgrade will leave in it and why. Mirrors the backfill engine
-- (sql/backfill.sql, resolve_batch): a row that needs work takes its user from itself, its project's
-- owner, params.user_id, then its orchestrator task; its run type from itself, params.run_type, then
-- the orchestrator task, which lends only once it is healthy. The engine's repeated sweeps reach a
-- fixed point; here the recursive CTE walks the same parent chains from the rows that need no parent.
-- Rows in a cycle where every member needs its parent are never reached: the final sweep flags them.
-- Then the cleanup at the end of 0005 cancels healthy Queued rows older than queued_ttl, and the
-- trigger tasks_cancel_children their Queued descendants.
WITH RECURSIVE src AS (
    -- OFFSET 0 keeps this a subquery of its own, so that ref is computed once per row (merged into facts, it
    -- would be computed again where it is joined on)
    SELECT t.id, t.status::text AS status, ${user_id} AS user_id, ${run_type} AS run_type,
           ${legacy_reason} AS legacy_reason, ${dependant_on} AS dependant_on, ${project_id} AS project_id,
           t.created_at, t.params ->> 'user_id' AS params_user, t.params ->> 'run_type' AS params_run_type,
           ${try_uuid:t.params ->> 'orchestrator_task_id_ref'} AS ref
    FROM tasks t
    OFFSET 0
),
facts AS (  -- (not params: the CTEs below are kept in memory or on disk, so they hold only what is read later)
    SELECT s.id, s.status, s.user_id, s.run_type, s.legacy_reason, s.dependant_on, s.created_at, s.ref,
           ${canonical_status:s.status} AS canonical_status,
           own_user.id AS own_user_id,
           project_owner.user_id AS project_user_id,
           params_user.id AS params_user_id,
           ${canonical_run_type:s.run_type} AS own_run_type,
           ${canonical_run_type:s.params_run_type} AS params_run_type,
           parent.id AS parent_id
    FROM src s
    LEFT JOIN ${users} own_user ON own_user.id = s.user_id
    LEFT JOIN ${project_owners} project_owner ON project_owner.project_id = s.project_id
    LEFT JOIN ${users} params_user ON params_user.id = ${try_uuid:s.params_user}
    LEFT JOIN tasks parent ON parent.id = s.ref AND parent.id <> s.id
),
classified AS (
    SELECT f.*,
           -- = needs_work in sql/backfill.sql (a NULL status needs work: it is flagged missing_status)
           (f.legacy_reason IS NULL AND (
                  f.status IS NULL OR f.status IS DISTINCT FROM f.canonical_status
               OR f.run_type IS NULL OR f.run_type NOT IN ('cloud', 'local')
               OR f.user_id IS NULL OR f.own_user_id IS NULL)) AS needs_work,
           coalesce(f.own_user_id, f.project_user_id, f.params_user_id) AS self_user_id,
           coalesce(f.own_run_type, f.params_run_type) AS self_run_type
    FROM facts f
),
-- waits: the row needs work and cannot be made healthy from itself, and has an orchestrator task: the engine
-- makes it wait while that task still needs work, then takes what the task lends. Every other row's outcome
-- is its own.
chained AS (
    SELECT c.*,
           c.needs_work AND c.parent_id IS NOT NULL
               AND NOT (c.canonical_status IS NOT NULL AND c.self_user_id IS NOT NULL AND c.self_run_type IS NOT NULL)
               AS waits
    FROM classified c
),
waiting AS (
    SELECT c.id, c.parent_id, c.canonical_status, c.self_user_id, c.self_run_type FROM chained c WHERE c.waits
),
-- healthy: the row ends with legacy_reason NULL; user_id / run_type: what it then holds. Walked from the
-- tasks that rows wait for and wait for nothing themselves, down their waiting children (a task has one
-- parent, so each is reached at most once).
resolved(id, user_id, run_type, healthy) AS (
    SELECT c.id,
           CASE WHEN c.needs_work THEN c.self_user_id ELSE c.user_id END,
           CASE WHEN c.needs_work THEN c.self_run_type ELSE c.run_type END,
           CASE WHEN c.needs_work
                THEN c.canonical_status IS NOT NULL AND c.self_user_id IS NOT NULL AND c.self_run_type IS NOT NULL
                ELSE c.legacy_reason IS NULL END
    FROM chained c
    WHERE NOT c.waits AND c.id IN (SELECT w.parent_id FROM waiting w)
    UNION ALL
    SELECT w.id,
           coalesce(w.self_user_id, CASE WHEN r.healthy THEN r.user_id END),
           coalesce(w.self_run_type, CASE WHEN r.healthy THEN r.run_type END),
           w.canonical_status IS NOT NULL
               AND coalesce(w.self_user_id, CASE WHEN r.healthy THEN r.user_id END) IS NOT NULL
               AND coalesce(w.self_run_type, CASE WHEN r.healthy THEN r.run_type END) IS NOT NULL
    FROM resolved r
    JOIN waiting w ON w.parent_id = r.id
),
-- lent_*: what the orchestrator task lends a waiting row (nothing: never reached, or not healthy). Only the
-- waiting rows are joined to it: a row that does not wait needs nothing lent.
lent AS (
    SELECT c.*, NULL::uuid AS lent_user_id, NULL::text AS lent_run_type FROM chained c WHERE NOT c.waits
    UNION ALL
    SELECT c.*, CASE WHEN p.healthy THEN p.user_id END, CASE WHEN p.healthy THEN p.run_type END
    FROM chained c
    LEFT JOIN resolved p ON p.id = c.parent_id
    WHERE c.waits
),
backfilled AS (
    SELECT c.id, c.status, c.needs_work, c.created_at, c.dependant_on, c.ref,
           c.canonical_status,
           c.user_id IS NOT NULL AND c.own_user_id IS NULL AS dangling_user,
           CASE WHEN NOT c.needs_work OR c.own_user_id IS NOT NULL THEN NULL
                WHEN c.project_user_id IS NOT NULL THEN 'project owner'
                WHEN c.params_user_id IS NOT NULL THEN 'params.user_id'
                WHEN c.lent_user_id IS NOT NULL THEN 'orchestrator task' END AS user_source,
           CASE WHEN NOT c.needs_work THEN NULL
                WHEN c.own_run_type IS NOT NULL
                THEN CASE WHEN c.own_run_type <> c.run_type THEN 'normalised' END
                WHEN c.params_run_type IS NOT NULL THEN 'params.run_type'
                WHEN c.lent_run_type IS NOT NULL THEN 'orchestrator task' END AS run_type_source,
           CASE WHEN c.needs_work THEN coalesce(c.self_user_id, c.lent_user_id) ELSE c.user_id END AS new_user_id,
           CASE WHEN c.needs_work THEN coalesce(c.self_run_type, c.lent_run_type) ELSE c.run_type END AS new_run_type,
           c.run_type, c.legacy_reason, c.user_id
    FROM lent c
),
verdict AS (
    SELECT b.*,
           CASE WHEN NOT b.needs_work THEN b.legacy_reason
                ELSE nullif(concat_ws(',',
                    CASE WHEN b.canonical_status IS NULL
                         THEN CASE WHEN b.status IS NULL THEN 'missing_status' ELSE 'invalid_status' END END,
                    CASE WHEN b.new_user_id IS NULL
                         THEN CASE WHEN b.user_id IS NOT NULL THEN 'unknown_user' ELSE 'missing_user_id' END END,
                    CASE WHEN b.new_run_type IS NULL
                         THEN CASE WHEN nullif(btrim(b.run_type), '') IS NULL THEN 'missing_run_type'
                                   ELSE 'invalid_run_type' END END
                ), '') END AS new_legacy_reason
    FROM backfilled b
),
after_backfill AS (
    SELECT v.*,
           v.needs_work AND v.new_legacy_reason IS NOT NULL AS flagged_now,
           CASE WHEN NOT v.needs_work THEN v.status
                WHEN v.new_legacy_reason IS NOT NULL AND (v.canonical_status IS NULL OR v.canonical_status = 'Queued')
                THEN 'Cancelled'
                ELSE v.canonical_status END AS new_status
    FROM verdict v
),
cleanup AS (  -- stale: the cleanup cancels it
    SELECT a.*, a.new_status = 'Queued' AND a.created_at < now() - CAST(:queued_ttl AS interval) AS stale
    FROM after_backfill a
),
-- Queued rows by the task they hang on: dependant_on and the orchestrator task, one key each (an OR of the two
-- in a join condition cannot be hashed).
queued_edges(id, parent) AS (
    SELECT c.id, c.dependant_on FROM cleanup c WHERE c.new_status = 'Queued' AND c.dependant_on IS NOT NULL
    UNION ALL
    SELECT c.id, c.ref FROM cleanup c WHERE c.new_status = 'Queued' AND c.ref IS NOT NULL
),
doomed(id) AS (  -- the Queued descendants of stale rows, as tasks_cancel_children walks them (UNION: each once)
    SELECT e.id FROM cleanup s JOIN queued_edges e ON e.parent = s.id WHERE s.stale
    UNION
    SELECT e.id FROM doomed d JOIN queued_edges e ON e.parent = d.id
),
-- Only Queued rows can be doomed: only they are joined to it.
cancelled AS (
    SELECT c.*, false AS doomed FROM cleanup c WHERE c.new_status IS DISTINCT FROM 'Queued'
    UNION ALL
    SELECT c.*, d.id IS NOT NULL FROM cleanup c LEFT JOIN doomed d ON d.id = c.id WHERE c.new_status = 'Queued'
)
SELECT c.id, c.status, c.needs_work, c.flagged_now, c.dangling_user, c.user_source, c.run_type_source,
       c.canonical_status IS NOT NULL AND c.canonical_status <> c.status AND c.needs_work AS status_normalised,
       c.flagged_now AND (c.canonical_status IS NULL OR c.canonical_status = 'Queued') AS cancelled_flagged,
       c.new_legacy_reason AS legacy_reason,
       CASE WHEN c.stale THEN 'stale' WHEN c.doomed THEN 'child of a cancelled task' END AS cleanup,
       CASE WHEN c.stale OR c.doomed THEN 'Cancelled' ELSE c.new_status END AS final_status,
       -- a flagged row keeps a run type that cannot be derived (the DBA reads it), as the engine does
       c.new_user_id AS user_id, coalesce(c.new_run_type, c.run_type) AS run_type, c.created_at, c.dependant_on
FROM cancelled c

-- summary --
-- Counts from the per-task prediction (the query predict, embedded), in one pass over it. ready: the view
-- taskdb_ready_tasks on the predicted rows, its dependency and its user found by joins (a subquery inside the
-- OR ran once per row); a row is in it at most once, so the Queued ones it does not hold are a difference.
WITH p AS (${predict}),
ready AS (
    SELECT q.id, q.status, q.run_type
    FROM p q
    LEFT JOIN p dependency ON dependency.id = q.dependant_on
    WHERE q.final_status = 'Queued' AND q.legacy_reason IS NULL
      AND q.created_at > now() - CAST(:queued_ttl AS interval)
      AND (q.dependant_on IS NULL OR dependency.final_status = 'Complete')
      AND EXISTS (SELECT FROM ${users} u WHERE u.id = q.user_id AND u.credits > 0)
)
SELECT
    count(*) AS tasks,
    count(*) FILTER (WHERE needs_work) AS needs_work,
    count(*) FILTER (WHERE needs_work AND NOT flagged_now) AS backfilled,
    count(*) FILTER (WHERE flagged_now) AS flagged,
    count(*) FILTER (WHERE cancelled_flagged) AS flagged_cancelled,
    count(*) FILTER (WHERE status_normalised) AS status_normalised,
    count(*) FILTER (WHERE dangling_user AND needs_work) AS user_id_references_no_user,
    count(*) FILTER (WHERE user_source = 'project owner') AS user_from_project_owner,
    count(*) FILTER (WHERE user_source = 'params.user_id') AS user_from_params,
    count(*) FILTER (WHERE user_source = 'orchestrator task') AS user_from_orchestrator,
    count(*) FILTER (WHERE run_type_source = 'normalised') AS run_type_normalised,
    count(*) FILTER (WHERE run_type_source = 'params.run_type') AS run_type_from_params,
    count(*) FILTER (WHERE run_type_source = 'orchestrator task') AS run_type_from_orchestrator,
    count(*) FILTER (WHERE cleanup = 'stale') AS cleanup_stale,
    count(*) FILTER (WHERE cleanup = 'child of a cancelled task') AS cleanup_children,
    count(*) FILTER (WHERE status = 'Queued') AS queued_now,
    -- (each id once in ready, which holds only predicted rows)
    count(*) FILTER (WHERE status = 'Queued') - (SELECT count(*) FROM ready WHERE status = 'Queued')
        AS queued_no_longer_counted,
    (SELECT count(*) FROM ready WHERE run_type = 'cloud') AS ready_cloud,
    (SELECT count(*) FROM ready WHERE run_type = 'local') AS ready_local,
    (SELECT coalesce(jsonb_object_agg(reason, n), '{}'::jsonb) FROM (
        SELECT reason, count(*) AS n
        FROM p, unnest(string_to_array(p.legacy_reason, ',')) AS reason
        WHERE p.flagged_now GROUP BY reason) r) AS flag_reasons
FROM p
