-- Status spellings a text status column lets through (an enum column cannot hold them).
INSERT INTO tasks (id, task_type, params, status, attempts, created_at, user_id, run_type) VALUES
    (md5('task-status-lower')::uuid, 'travel_segment', '{}', 'queued', 0, now() - interval '40 minutes', md5('user-bob')::uuid, 'cloud'),
    (md5('task-status-space')::uuid, 'travel_segment', '{}', 'Complete ', 1, now() - interval '4 days', md5('user-bob')::uuid, 'cloud'),
    (md5('task-status-unknown')::uuid, 'travel_segment', '{}', 'Pending', 0, now() - interval '6 hours', md5('user-bob')::uuid, 'cloud');
