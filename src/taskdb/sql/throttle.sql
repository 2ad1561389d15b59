-- The throttle's query (see taskdb/throttle.py): how far behind this server's streaming replicas are.

-- replica_lag --
-- One row per streaming replica: its name, the replay lag PostgreSQL measures (it keeps growing while a standby's
-- replay is stuck, e.g. paused, since the primary interpolates from the WAL it sent; NULL once a caught-up standby
-- has been idle a while, i.e. no lag) and the WAL bytes written here and not yet replayed there. `visible` is false
-- where this role may not read the lag (it needs pg_monitor or pg_read_all_stats): PostgreSQL then shows the row
-- with those columns NULL. Only physical standbys count: a logical walsender (a subscriber, a CDC consumer) is
-- connected to a database, and a base backup in progress is no replica yet.
SELECT coalesce(nullif(r.application_name, ''), host(r.client_addr), 'pid ' || r.pid) AS replica,
       r.state IS NOT NULL AS visible,
       coalesce(round(extract(epoch FROM r.replay_lag) * 1000), 0)::bigint AS replay_lag_ms,
       coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), r.replay_lsn), 0)::bigint AS behind_bytes
FROM pg_stat_replication r
JOIN pg_stat_activity a ON a.pid = r.pid
WHERE a.datname IS NULL AND r.state IS DISTINCT FROM 'backup'
ORDER BY r.replay_lag DESC NULLS LAST, behind_bytes DESC
