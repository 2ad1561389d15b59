-- The incident database (see shared seed report "18:27 Scale-Up Event"), half-migrated: user_id and
-- run_type exist but are nullable; old rows have neither, new rows have both, some values are wrong.
-- Ids are md5-derived so tests can name rows: md5('task-<name>')::uuid.

INSERT INTO users (id, email, credits) VALUES
    (md5('user-alice')::uuid, 'alice@example.com', 100),
    (md5('user-bob')::uuid, 'bob@example.com', 50),
    (md5('user-carol')::uuid, 'carol@example.com', 0),     -- no credits: her work is not claimable
    (md5('user-dave')::uuid, 'dave@example.com', 10);

INSERT INTO projects (id, user_id, name) VALUES
    (md5('project-alice')::uuid, md5('user-alice')::uuid, 'alice travel'),
    (md5('project-bob')::uuid, md5('user-bob')::uuid, 'bob travel');

-- The 51 Queued tasks the autoscaler counted at 18:25: written before user_id and run_type existed,
-- attempts 0, never claimed. 43 are older than 24 hours (the oldest 65 days), 8 are younger.
INSERT INTO tasks (id, task_type, params, status, attempts, created_at)
SELECT md5('incident-queued-' || n)::uuid,
       CASE WHEN n % 3 = 0 THEN 'travel_stitch' ELSE 'travel_segment' END,
       jsonb_build_object('orchestrator_run_id', 'run-' || (n / 10), 'segment_index', n),
       'Queued', 0,
       CASE WHEN n <= 43
            THEN now() - interval '65 days' + (n - 1) * ((interval '65 days' - interval '25 hours') / 42)
            ELSE now() - interval '1 hour' - (n - 43) * interval '2 hours' END
FROM generate_series(1, 51) AS n;

-- Healthy rows the current application writes.
INSERT INTO tasks (id, task_type, params, status, attempts, created_at, user_id, run_type, worker_id) VALUES
    (md5('task-healthy-1')::uuid, 'travel_segment', '{}', 'Queued', 0, now() - interval '10 minutes', md5('user-alice')::uuid, 'cloud', NULL),
    (md5('task-healthy-2')::uuid, 'travel_segment', '{}', 'Queued', 0, now() - interval '2 hours', md5('user-alice')::uuid, 'cloud', NULL),
    (md5('task-healthy-3')::uuid, 'travel_stitch', '{}', 'Queued', 0, now() - interval '30 minutes', md5('user-bob')::uuid, 'cloud', NULL),
    (md5('task-healthy-4')::uuid, 'image_edit', '{}', 'Queued', 0, now() - interval '5 minutes', md5('user-dave')::uuid, 'local', NULL),
    (md5('task-healthy-5')::uuid, 'travel_segment', '{}', 'In Progress', 1, now() - interval '20 minutes', md5('user-alice')::uuid, 'cloud', 'gpu-worker-1'),
    (md5('task-healthy-6')::uuid, 'travel_segment', '{}', 'Complete', 1, now() - interval '3 days', md5('user-bob')::uuid, 'cloud', 'gpu-worker-2'),
    (md5('task-healthy-7')::uuid, 'travel_stitch', '{}', 'Complete', 1, now() - interval '3 days', md5('user-bob')::uuid, 'cloud', 'gpu-worker-2'),
    (md5('task-healthy-8')::uuid, 'travel_segment', '{}', 'Queued', 0, now() - interval '1 hour', md5('user-carol')::uuid, 'cloud', NULL),
    (md5('task-healthy-9')::uuid, 'image_edit', '{}', 'Failed', 3, now() - interval '2 days', md5('user-dave')::uuid, 'local', 'laptop-dave');

-- The half-migrated application's wrong values, and legacy rows whose owner can be derived.
INSERT INTO tasks (id, task_type, params, status, attempts, created_at, user_id, run_type, project_id) VALUES
    -- run_type spellings
    (md5('task-gpu-upper')::uuid, 'travel_segment', '{}', 'Queued', 0, now() - interval '1 hour', md5('user-alice')::uuid, 'GPU', NULL),
    (md5('task-cloud-space')::uuid, 'travel_stitch', '{}', 'Complete', 1, now() - interval '5 days', md5('user-bob')::uuid, 'Cloud ', NULL),
    (md5('task-empty-run-type')::uuid, 'image_edit', '{"run_type": "local"}', 'Queued', 0, now() - interval '3 hours', md5('user-dave')::uuid, '', NULL),
    (md5('task-api-run-type')::uuid, 'travel_segment', '{}', 'Failed', 2, now() - interval '9 days', md5('user-alice')::uuid, 'api', NULL),
    -- owner from the project, from params, from the orchestrator task (and its child)
    (md5('task-from-project')::uuid, 'travel_segment', '{}', 'Complete', 1, now() - interval '30 days', NULL, 'cloud', md5('project-bob')::uuid),
    (md5('task-from-params')::uuid, 'travel_segment', jsonb_build_object('user_id', md5('user-alice')::uuid, 'run_type', 'gpu'), 'Complete', 1, now() - interval '40 days', NULL, NULL, NULL),
    (md5('task-orchestrator')::uuid, 'travel_orchestrator', '{}', 'Complete', 1, now() - interval '50 days', md5('user-dave')::uuid, 'cloud', NULL),
    (md5('task-child')::uuid, 'travel_segment', jsonb_build_object('orchestrator_task_id_ref', md5('task-orchestrator')::uuid), 'Complete', 1, now() - interval '50 days', NULL, NULL, NULL),
    (md5('task-grandchild')::uuid, 'travel_stitch', jsonb_build_object('orchestrator_task_id_ref', md5('task-child')::uuid), 'Complete', 1, now() - interval '50 days', NULL, NULL, NULL),
    -- users that do not exist
    (md5('task-unknown-user-project')::uuid, 'travel_segment', '{}', 'Complete', 1, now() - interval '20 days', md5('user-ghost')::uuid, 'local', md5('project-alice')::uuid),
    (md5('task-unknown-user-only')::uuid, 'travel_segment', '{}', 'Queued', 0, now() - interval '3 days', md5('user-ghost-2')::uuid, 'cloud', NULL),
    -- nothing to derive from
    (md5('task-legacy-in-progress')::uuid, 'travel_segment', '{}', 'In Progress', 1, now() - interval '60 days', NULL, NULL, NULL),
    (md5('task-orphan-ref')::uuid, 'travel_segment', jsonb_build_object('orchestrator_task_id_ref', md5('task-missing')::uuid), 'Queued', 0, now() - interval '12 hours', NULL, NULL, NULL),
    (md5('task-cycle-a')::uuid, 'travel_segment', jsonb_build_object('orchestrator_task_id_ref', md5('task-cycle-b')::uuid), 'Complete', 1, now() - interval '45 days', NULL, NULL, NULL),
    (md5('task-cycle-b')::uuid, 'travel_segment', jsonb_build_object('orchestrator_task_id_ref', md5('task-cycle-a')::uuid), 'Complete', 1, now() - interval '45 days', NULL, NULL, NULL);
