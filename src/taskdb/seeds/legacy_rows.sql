-- A legacy database: tasks has no user_id or run_type column at all.
INSERT INTO users (id, email, credits) VALUES (md5('user-alice')::uuid, 'alice@example.com', 100);
INSERT INTO projects (id, user_id, name) VALUES (md5('project-alice')::uuid, md5('user-alice')::uuid, 'alice travel');
INSERT INTO tasks (id, task_type, params, status, attempts, created_at, project_id) VALUES
    (md5('task-legacy-project')::uuid, 'travel_segment', '{"run_type": "GPU"}', 'Complete', 1, now() - interval '90 days', md5('project-alice')::uuid),
    (md5('task-legacy-queued')::uuid, 'travel_segment', '{}', 'Queued', 0, now() - interval '80 days', NULL),
    (md5('task-legacy-failed')::uuid, 'travel_stitch', '{}', 'Failed', 2, now() - interval '70 days', NULL);
