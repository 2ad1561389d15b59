-- The application's own schema, before taskdb (placeholders filled by taskdb.seeds.load_schema).
${status_enum}

CREATE TABLE users (
    id uuid PRIMARY KEY,
    email text,
    credits numeric NOT NULL DEFAULT 0
);

CREATE TABLE projects (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id),
    name text
);

CREATE TABLE tasks (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    task_type text NOT NULL,
    params jsonb NOT NULL DEFAULT '{}'::jsonb,
    status ${status_type} NOT NULL DEFAULT 'Queued',
    attempts integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz,
    error_message text,
    project_id uuid REFERENCES projects (id),
    dependant_on uuid,
    ${user_columns}
    worker_id text,
    output_location text   -- an application column taskdb knows nothing about: it must survive
);
