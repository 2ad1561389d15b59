-- The real system's status type (the application created it; taskdb adopts it).
CREATE TYPE task_status AS ENUM ('Queued', 'In Progress', 'Complete', 'Failed', 'Cancelled');
