-- The lock discipline's queries (see taskdb/locks.py), run online by taskdb.locks and, the same texts, by the
-- offline script's procedures (src/taskdb/offline.py fills them in).

-- blockers --
-- Who made a lock wait fail: the sessions that hold a lock on one of :relations, oldest transaction first (with
-- :snapshots, or when after a wait nobody's lock explains it, also the oldest transactions that hold a snapshot:
-- CREATE INDEX CONCURRENTLY waits for them whatever they touched). Only transactions older than our wait
-- (:waited_s seconds) can have made us wait: the writers that had queued behind our request got their locks the
-- moment it gave up, and must not be named instead of the real blocker. pg_locks is read live and
-- pg_stat_activity from a snapshot, so a writer seen between two transactions (idle, no xact_start) can still
-- show the lock of the transaction it began a moment later: a session outside a transaction holds no relation
-- lock, and that fresh one did not make us wait.
WITH locked AS (
    SELECT DISTINCT ON (a.pid)
           a.pid, a.application_name, a.state, l.mode, l.relation::regclass::text AS relation,
           date_trunc('second', now() - a.xact_start)::text AS xact_age,
           left(a.query, 120) AS query, a.xact_start
    FROM pg_locks l
    JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'relation' AND l.granted AND l.pid <> pg_backend_pid()
      AND l.relation = ANY (SELECT to_regclass(r)::oid FROM unnest(CAST(:relations AS text[])) AS r)
      AND a.xact_start <= clock_timestamp() - make_interval(secs => CAST(:waited_s AS double precision))
    ORDER BY a.pid, a.xact_start
),
open_transactions AS (
    SELECT a.pid, a.application_name, a.state, 'a snapshot' AS mode, 'this database' AS relation,
           date_trunc('second', now() - a.xact_start)::text AS xact_age,
           left(a.query, 120) AS query, a.xact_start
    FROM pg_stat_activity a
    WHERE (CAST(:snapshots AS boolean)
           OR (CAST(:waited_s AS double precision) > 0 AND NOT EXISTS (SELECT FROM locked)))
      AND a.datname = current_database() AND a.pid <> pg_backend_pid() AND a.backend_type = 'client backend'
      AND a.xact_start IS NOT NULL AND (a.backend_xid IS NOT NULL OR a.backend_xmin IS NOT NULL)
      AND a.xact_start <= clock_timestamp() - make_interval(secs => CAST(:waited_s AS double precision))
    ORDER BY a.xact_start
    LIMIT 5
)
SELECT b.pid, b.application_name, b.state, b.mode, b.relation, b.xact_age, b.query, b.xact_start
FROM (
    SELECT l.*, 0 AS listed FROM locked l
    UNION ALL
    SELECT o.*, 1 FROM open_transactions o WHERE o.pid NOT IN (SELECT pid FROM locked)
) b
ORDER BY b.xact_start, b.listed, b.pid

-- backoff --
-- The pause before attempt :attempt + 1 after a lock wait failed: full jitter up to :backoff_base_s doubled per
-- attempt, at most :backoff_max_s (LockPolicy's), so that several pods retrying at once do not retry in step.
SELECT random() * least(CAST(:backoff_max_s AS double precision),
                        CAST(:backoff_base_s AS double precision) * 2 ^ (CAST(:attempt AS integer) - 1)) AS pause
