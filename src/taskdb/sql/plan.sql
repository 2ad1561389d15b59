-- `taskdb plan`: what the pending upgrade will do to the rows, predicted by read-only queries.
--
-- The plan may run before revision 0003 created the helper functions and before 0002 added columns,
-- and in a READ ONLY transaction, which cannot create them. So the helpers appear here as inline
-- expressions (tests/unit and tests/integration/test_plan.py prove them equal to the functions and
-- the predictions equal to what the upgrade then does), and missing columns read as NULL.
--
-- Placeholders filled in by taskdb/plan.py (in the queries below, not in comments):
--   ${user_id} ${run_type} ${legacy_reason} ${dependant_on} ${project_id}   a column, or NULL of its type
--   ${project_owner}   SELECT of the project owner's id for task s (no rows when there is no projects table)
--   ${users}           users, or an empty relation of the same shape when the table does not exist yet
-- Bind parameter :queued_ttl: the interval after which the cleanup at the end of 0005 cancels Queued tasks.
-- Inline helpers take their argument as ${x}: canonical_status, canonical_run_type, try_uuid.

-- canonical_status --
-- = taskdb_canonical_status(x)
(CASE regexp_replace(lower(${x}), '[[:space:]_-]+', '', 'g')
    WHEN 'queued' THEN 'Queued'
    WHEN 'inprogress' THEN 'In Progress'
    WHEN 'complete' THEN 'Complete'
    WHEN 'failed' THEN 'Failed'
    WHEN 'cancelled' THEN 'Cancelled'
    WHEN 'canceled' THEN 'Cancelled'
END)

-- canonical_run_type --
-- = taskdb_canonical_run_type(x)
(CASE lower(regexp_replace(${x}, '^[[:space:]]+|[[:space:]]+$', '', 'g'))
    WHEN 'cloud' THEN 'cloud'
    WHEN 'gpu' THEN 'cloud'
    WHEN 'local' THEN 'local'
END)

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
    SELECT t.id, t.status::text AS status, ${user_id} AS user_id, ${run_type} AS run_type,
           ${legacy_reason} AS legacy_reason, ${dependant_on} AS dependant_on, ${project_id} AS project_id,
           t.created_at, t.params
    FROM tasks t
),
facts AS (
    SELECT s.*,
           ${canonical_status:s.status} AS canonical_status,
           own_user.id AS own_user_id,
           (${project_owner}) AS project_user_id,
           params_user.id AS params_user_id,
           ${canonical_run_type:s.run_type} AS own_run_type,
           ${canonical_run_type:s.params ->> 'run_type'} AS params_run_type,
           ${try_uuid:s.params ->> 'orchestrator_task_id_ref'} AS ref,
           parent.id AS parent_id
    FROM src s
    LEFT JOIN ${users} own_user ON own_user.id = s.user_id
    LEFT JOIN ${users} params_user ON params_user.id = ${try_uuid:s.params ->> 'user_id'}
    LEFT JOIN src parent
        ON parent.id = ${try_uuid:s.params ->> 'orchestrator_task_id_ref'} AND parent.id <> s.id
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
-- healthy: the row ends with legacy_reason NULL; user_id / run_type: what it then holds.
resolved(id, user_id, run_type, healthy) AS (
    SELECT c.id,
           CASE WHEN c.needs_work THEN c.self_user_id ELSE c.user_id END,
           CASE WHEN c.needs_work THEN c.self_run_type ELSE c.run_type END,
           CASE WHEN c.needs_work
                THEN c.canonical_status IS NOT NULL AND c.self_user_id IS NOT NULL AND c.self_run_type IS NOT NULL
                ELSE c.legacy_reason IS NULL END
    FROM classified c
    WHERE NOT c.needs_work
       OR c.parent_id IS NULL
       OR (c.canonical_status IS NOT NULL AND c.self_user_id IS NOT NULL AND c.self_run_type IS NOT NULL)
    UNION ALL
    SELECT c.id,
           coalesce(c.self_user_id, CASE WHEN r.healthy THEN r.user_id END),
           coalesce(c.self_run_type, CASE WHEN r.healthy THEN r.run_type END),
           c.canonical_status IS NOT NULL
               AND coalesce(c.self_user_id, CASE WHEN r.healthy THEN r.user_id END) IS NOT NULL
               AND coalesce(c.self_run_type, CASE WHEN r.healthy THEN r.run_type END) IS NOT NULL
    FROM resolved r
    JOIN classified c ON c.parent_id = r.id
    WHERE c.needs_work
      AND NOT (c.canonical_status IS NOT NULL AND c.self_user_id IS NOT NULL AND c.self_run_type IS NOT NULL)
),
backfilled AS (
    SELECT c.id, c.status, c.needs_work, c.created_at, c.dependant_on, c.ref,
           c.canonical_status,
           c.user_id IS NOT NULL AND c.own_user_id IS NULL AS dangling_user,
           CASE WHEN NOT c.needs_work OR c.own_user_id IS NOT NULL THEN NULL
                WHEN c.project_user_id IS NOT NULL THEN 'project owner'
                WHEN c.params_user_id IS NOT NULL THEN 'params.user_id'
                WHEN p.healthy AND p.user_id IS NOT NULL THEN 'orchestrator task' END AS user_source,
           CASE WHEN NOT c.needs_work THEN NULL
                WHEN c.own_run_type IS NOT NULL
                THEN CASE WHEN c.own_run_type <> c.run_type THEN 'normalised' END
                WHEN c.params_run_type IS NOT NULL THEN 'params.run_type'
                WHEN p.healthy AND p.run_type IS NOT NULL THEN 'orchestrator task' END AS run_type_source,
           CASE WHEN c.needs_work THEN coalesce(c.self_user_id, CASE WHEN p.healthy THEN p.user_id END)
                ELSE c.user_id END AS new_user_id,
           CASE WHEN c.needs_work THEN coalesce(c.self_run_type, CASE WHEN p.healthy THEN p.run_type END)
                ELSE c.run_type END AS new_run_type,
           c.run_type, c.legacy_reason, c.user_id
    FROM classified c
    LEFT JOIN resolved p ON p.id = c.parent_id
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
stale AS (
    SELECT a.id FROM after_backfill a
    WHERE a.new_status = 'Queued' AND a.created_at < now() - CAST(:queued_ttl AS interval)
),
doomed(id) AS (  -- the Queued descendants of stale rows, as tasks_cancel_children walks them
    SELECT x.id FROM stale s JOIN after_backfill x
        ON x.new_status = 'Queued' AND (x.dependant_on = s.id OR x.ref = s.id)
    UNION
    SELECT x.id FROM doomed d JOIN after_backfill x
        ON x.new_status = 'Queued' AND (x.dependant_on = d.id OR x.ref = d.id)
)
SELECT a.id, a.status, a.needs_work, a.flagged_now, a.dangling_user, a.user_source, a.run_type_source,
       a.canonical_status IS NOT NULL AND a.canonical_status <> a.status AND a.needs_work AS status_normalised,
       a.flagged_now AND (a.canonical_status IS NULL OR a.canonical_status = 'Queued') AS cancelled_flagged,
       a.new_legacy_reason AS legacy_reason,
       CASE WHEN a.id IN (SELECT id FROM stale) THEN 'stale'
            WHEN a.id IN (SELECT id FROM doomed) THEN 'child of a cancelled task' END AS cleanup,
       CASE WHEN a.id IN (SELECT id FROM stale UNION SELECT id FROM doomed) THEN 'Cancelled'
            ELSE a.new_status END AS final_status,
       -- a flagged row keeps a run type that cannot be derived (the DBA reads it), as the engine does
       a.new_user_id AS user_id, coalesce(a.new_run_type, a.run_type) AS run_type, a.created_at, a.dependant_on
FROM after_backfill a

-- summary --
-- Counts from the per-task prediction (the query predict, embedded), in one pass.
WITH p AS (${predict}),
ready AS (  -- = the view taskdb_ready_tasks, on the predicted rows
    SELECT p.id, p.run_type FROM p
    WHERE p.final_status = 'Queued' AND p.legacy_reason IS NULL
      AND p.created_at > now() - CAST(:queued_ttl AS interval)
      AND (p.dependant_on IS NULL OR EXISTS (SELECT 1 FROM p d WHERE d.id = p.dependant_on AND d.final_status = 'Complete'))
      AND EXISTS (SELECT 1 FROM ${users} u WHERE u.id = p.user_id AND u.credits > 0)
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
    count(*) FILTER (WHERE status = 'Queued' AND id NOT IN (SELECT id FROM ready)) AS queued_no_longer_counted,
    (SELECT count(*) FROM ready WHERE run_type = 'cloud') AS ready_cloud,
    (SELECT count(*) FROM ready WHERE run_type = 'local') AS ready_local,
    (SELECT coalesce(jsonb_object_agg(reason, n), '{}'::jsonb) FROM (
        SELECT reason, count(*) AS n
        FROM p, unnest(string_to_array(p.legacy_reason, ',')) AS reason
        WHERE p.flagged_now GROUP BY reason) r) AS flag_reasons
FROM p
