-- Frozen SQL of revision 0008_monitor_grants: what taskdb_monitor may read of tasks itself, for `taskdb metrics`
-- (src/taskdb/metrics/collector.sql counts the Queued rows per run type and the flagged ones among them, which
-- queue_health does not give). Three columns, no task's content (params, owner).

-- grants --
-- Where 0005 made the monitor role (or this revision may make it): a login role granted taskdb_monitor scrapes.
GRANT SELECT (status, run_type, legacy_reason) ON tasks TO taskdb_monitor;

-- revokes --
-- Downgrade: exactly what the grants section granted, where the role exists and tasks has the columns (an offline
-- downgrade script run again comes here after 0002's downgrade dropped them, or base dropped tasks).
DO $$
BEGIN
    IF to_regrole('taskdb_monitor') IS NOT NULL AND (
        SELECT count(*) FROM pg_attribute
        WHERE attrelid = to_regclass('tasks') AND attname IN ('status', 'run_type', 'legacy_reason')
          AND NOT attisdropped
    ) = 3 THEN
        REVOKE SELECT (status, run_type, legacy_reason) ON tasks FROM taskdb_monitor;
    END IF;
END
$$;
