-- The worker pool as the workers themselves report it: which GPU each one has (adapter, backend,
-- device limits), how many jobs it runs at once and has in hand, and whether it is still alive.
-- Operators read it to see the pool; the scaler reads it to show the pool it sized.
CREATE TABLE workers (
    id            text PRIMARY KEY,
    hostname      text NOT NULL,
    pid           integer NOT NULL,
    adapter       text NOT NULL,
    backend       text NOT NULL,
    device_type   text NOT NULL,
    driver        text NOT NULL,
    limits        jsonb NOT NULL,
    concurrency   integer NOT NULL,
    version       text NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    running_jobs  integer NOT NULL DEFAULT 0,
    stopped_at    timestamptz
);

CREATE INDEX workers_alive ON workers (heartbeat_at) WHERE stopped_at IS NULL;

-- The scaler counts runnable queued jobs and running jobs on every tick.
CREATE INDEX jobs_running_worker ON jobs (worker_id) WHERE status = 'running';
