-- A small, healthy queue at head (`taskdb reset --seed demo`): every task has an owner and a run type, none
-- is flagged. Loaded after `upgrade head` onto the tables taskdb creates on an empty database, so it names
-- only the columns of the contract. Ids are md5-derived so tests and docs can name rows:
-- users md5('user-demo-<name>')::uuid, projects md5('project-demo-<name>')::uuid, tasks md5('task-demo-<name>')::uuid.
--
-- What the queue functions say about it (task_hygiene_settings defaults: limit 5, stale after 24 h, TTL 7 days):
--   claimable_task_count('cloud') = 2   ana: 2 ready (a third waits for its dependency), 2 In Progress
--                                       dev: 2 ready, but already 5 In Progress (the per-user limit)
--                                       chloe: 1 Queued, but no credits
--   claimable_task_count('local') = 3   ben: 3 ready, 1 In Progress
--   stale_queued_tasks: 1 row           ben's 2-day-old Queued task (cleanup cancels it at 7 days, not now)

INSERT INTO users (id, credits) VALUES
    (md5('user-demo-ana')::uuid, 120),      -- renders travel videos on cloud GPUs
    (md5('user-demo-ben')::uuid, 40),       -- edits images on his own machine (run_type local)
    (md5('user-demo-chloe')::uuid, 0),      -- out of credits: her Queued task is not claimable
    (md5('user-demo-dev')::uuid, 500);      -- a heavy user, at the concurrency limit

INSERT INTO projects (id, user_id) VALUES
    (md5('project-demo-ana')::uuid, md5('user-demo-ana')::uuid),
    (md5('project-demo-ben')::uuid, md5('user-demo-ben')::uuid),
    (md5('project-demo-chloe')::uuid, md5('user-demo-chloe')::uuid),
    (md5('project-demo-dev')::uuid, md5('user-demo-dev')::uuid);

-- One row per task: name, owner (user and project), orchestrator (a task name, into params), dependency
-- (a task name, into dependant_on), then the task's own values; ages are relative to now().
INSERT INTO tasks (id, task_type, params, status, attempts, created_at, updated_at, error_message, project_id,
                   dependant_on, user_id, run_type, worker_id)
SELECT md5('task-demo-' || d.name)::uuid,
       d.task_type,
       d.params::jsonb || CASE WHEN d.orchestrator IS NULL THEN '{}'::jsonb
                               ELSE jsonb_build_object('orchestrator_task_id_ref', md5('task-demo-' || d.orchestrator)::uuid) END,
       d.status,
       d.attempts,
       now() - d.age::interval,
       now() - d.updated_ago::interval,
       d.error_message,
       md5('project-demo-' || d.owner)::uuid,
       md5('task-demo-' || d.after)::uuid,   -- md5(NULL) is NULL: no dependency
       md5('user-demo-' || d.owner)::uuid,
       d.run_type,
       d.worker_id
FROM (VALUES
    -- ana, yesterday's travel video: done
    ('ana-trip-1', 'ana', NULL::text, NULL::text, 'travel_orchestrator', '{"prompt": "Lisbon at dusk", "segments": 2}',
     'Complete', 1, '26 hours', '24 hours', NULL::text, 'cloud', 'gpu-worker-1'),
    ('ana-trip-1-seg-1', 'ana', 'ana-trip-1', NULL, 'travel_segment', '{"segment_index": 0}',
     'Complete', 1, '26 hours', '25 hours', NULL, 'cloud', 'gpu-worker-1'),
    ('ana-trip-1-seg-2', 'ana', 'ana-trip-1', NULL, 'travel_segment', '{"segment_index": 1}',
     'Complete', 1, '26 hours', '25 hours', NULL, 'cloud', 'gpu-worker-2'),
    ('ana-trip-1-stitch', 'ana', 'ana-trip-1', 'ana-trip-1-seg-2', 'travel_stitch', '{}',
     'Complete', 1, '26 hours', '24 hours', NULL, 'cloud', 'gpu-worker-1'),
    -- ana, the video rendering now: two segments running, two ready, the stitch waits for the last segment
    ('ana-trip-2', 'ana', NULL, NULL, 'travel_orchestrator', '{"prompt": "Kyoto in the rain", "segments": 3}',
     'In Progress', 1, '20 minutes', '19 minutes', NULL, 'cloud', 'gpu-worker-3'),
    ('ana-trip-2-seg-1', 'ana', 'ana-trip-2', NULL, 'travel_segment', '{"segment_index": 0}',
     'In Progress', 1, '19 minutes', '4 minutes', NULL, 'cloud', 'gpu-worker-4'),
    ('ana-trip-2-seg-2', 'ana', 'ana-trip-2', NULL, 'travel_segment', '{"segment_index": 1}',
     'Queued', 0, '19 minutes', NULL, NULL, 'cloud', NULL),
    ('ana-trip-2-seg-3', 'ana', 'ana-trip-2', NULL, 'travel_segment', '{"segment_index": 2}',
     'Queued', 0, '19 minutes', NULL, NULL, 'cloud', NULL),
    ('ana-trip-2-stitch', 'ana', 'ana-trip-2', 'ana-trip-2-seg-3', 'travel_stitch', '{}',
     'Queued', 0, '19 minutes', NULL, NULL, 'cloud', NULL),
    -- ana, older work that did not finish
    ('ana-upscale-oom', 'ana', NULL, NULL, 'image_upscale', '{"scale": 4}',
     'Failed', 3, '3 days', '3 days', 'CUDA out of memory (attempt 3 of 3)', 'cloud', 'gpu-worker-2'),
    ('ana-trip-0', 'ana', NULL, NULL, 'travel_orchestrator', '{"prompt": "Oslo, test run", "segments": 1}',
     'Cancelled', 0, '4 days', '4 days', 'cancelled by the user', 'cloud', NULL),
    -- ben works locally
    ('ben-edit-1', 'ben', NULL, NULL, 'image_edit', '{"operation": "inpaint"}',
     'Complete', 1, '30 hours', '29 hours', NULL, 'local', 'laptop-ben'),
    ('ben-edit-2', 'ben', NULL, NULL, 'image_edit', '{"operation": "outpaint"}',
     'In Progress', 1, '12 minutes', '2 minutes', NULL, 'local', 'laptop-ben'),
    ('ben-edit-3', 'ben', NULL, NULL, 'image_edit', '{"operation": "recolor"}',
     'Queued', 0, '8 minutes', NULL, NULL, 'local', NULL),
    ('ben-edit-4', 'ben', NULL, NULL, 'image_edit', '{"operation": "crop"}',
     'Queued', 0, '3 minutes', NULL, NULL, 'local', NULL),
    ('ben-edit-stale', 'ben', NULL, NULL, 'image_edit', '{"operation": "denoise"}',
     'Queued', 0, '2 days', NULL, NULL, 'local', NULL),
    -- chloe has no credits left
    ('chloe-seg-1', 'chloe', NULL, NULL, 'travel_segment', '{"segment_index": 0}',
     'Complete', 1, '6 days', '6 days', NULL, 'cloud', 'gpu-worker-1'),
    ('chloe-seg-2', 'chloe', NULL, NULL, 'travel_segment', '{"segment_index": 1}',
     'Queued', 0, '40 minutes', NULL, NULL, 'cloud', NULL),
    -- dev runs five at once, two more wait their turn
    ('dev-batch-1', 'dev', NULL, NULL, 'image_generate', '{"batch": 1}', 'In Progress', 1, '9 minutes', '8 minutes', NULL, 'cloud', 'gpu-worker-5'),
    ('dev-batch-2', 'dev', NULL, NULL, 'image_generate', '{"batch": 2}', 'In Progress', 1, '9 minutes', '8 minutes', NULL, 'cloud', 'gpu-worker-6'),
    ('dev-batch-3', 'dev', NULL, NULL, 'image_generate', '{"batch": 3}', 'In Progress', 1, '9 minutes', '7 minutes', NULL, 'cloud', 'gpu-worker-7'),
    ('dev-batch-4', 'dev', NULL, NULL, 'image_generate', '{"batch": 4}', 'In Progress', 2, '9 minutes', '6 minutes', NULL, 'cloud', 'gpu-worker-8'),
    ('dev-batch-5', 'dev', NULL, NULL, 'image_generate', '{"batch": 5}', 'In Progress', 1, '9 minutes', '5 minutes', NULL, 'cloud', 'gpu-worker-9'),
    ('dev-batch-6', 'dev', NULL, NULL, 'image_generate', '{"batch": 6}', 'Queued', 0, '9 minutes', NULL, NULL, 'cloud', NULL),
    ('dev-batch-7', 'dev', NULL, NULL, 'image_generate', '{"batch": 7}', 'Queued', 0, '9 minutes', NULL, NULL, 'cloud', NULL)
) AS d(name, owner, orchestrator, after, task_type, params, status, attempts, age, updated_ago, error_message,
       run_type, worker_id);
