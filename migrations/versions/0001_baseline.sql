-- Frozen SQL of revision 0001_baseline: the tables as the application had them before user_id and
-- run_type existed. Each is created only where absent; an existing table is adopted as it is.

-- users --
-- Minimal owners of tasks. credits: the autoscaler only counts work of users who can pay for it.
CREATE TABLE users (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    credits numeric NOT NULL DEFAULT 0
)

-- projects --
-- A project belongs to one user: the first place a task's missing owner is looked up.
CREATE TABLE projects (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id uuid NOT NULL REFERENCES users (id)
)

-- tasks --
-- The queue in its legacy shape; revision 0002 adds user_id, run_type and legacy_reason.
CREATE TABLE tasks (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    task_type text NOT NULL,
    params jsonb NOT NULL DEFAULT '{}'::jsonb,
    status text NOT NULL DEFAULT 'Queued',
    attempts integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz,
    error_message text,
    project_id uuid,
    dependant_on uuid,
    worker_id text
)
