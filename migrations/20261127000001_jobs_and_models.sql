-- Jobs and the models that train jobs produce. Postgres is the source of truth for both;
-- the AMQP message only carries a job id.

CREATE TABLE jobs (
    id               uuid PRIMARY KEY,             -- UUIDv7: sorts by creation time
    type             text NOT NULL CHECK (type IN ('train', 'infer')),
    algorithm        text NOT NULL,
    model_id         uuid,                         -- infer: the model it runs
    status           text NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    attempt          integer NOT NULL DEFAULT 0,   -- incremented by each claim
    max_attempts     integer NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    params           jsonb NOT NULL DEFAULT '{}',
    input            jsonb NOT NULL,
    progress         jsonb,
    result           jsonb,
    error            jsonb,                        -- the final error: {code, message}
    attempt_errors   jsonb NOT NULL DEFAULT '[]',  -- every failed attempt's error, in order
    worker_id        text,
    lease_expires_at timestamptz,
    published_at     timestamptz,                  -- last (re)publish by the reaper
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz
);

CREATE INDEX jobs_status_id ON jobs (status, id DESC);
CREATE INDEX jobs_type_id ON jobs (type, id DESC);
CREATE INDEX jobs_running_lease ON jobs (lease_expires_at) WHERE status = 'running';
CREATE INDEX jobs_queued_created ON jobs (created_at) WHERE status = 'queued';

CREATE TABLE models (
    id           uuid PRIMARY KEY,
    algorithm    text NOT NULL,
    job_id       uuid NOT NULL UNIQUE REFERENCES jobs (id),  -- one model per train job, ever
    n_features   integer NOT NULL,
    n_classes    integer NOT NULL,
    params       jsonb NOT NULL,
    metrics      jsonb NOT NULL,
    artifact_uri text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Wakes API requests that wait for a job (`?wait=`): one notification per terminal transition.
CREATE FUNCTION jobs_notify_finished() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gpuq_job_finished', NEW.id::text);
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_finished AFTER UPDATE OF status ON jobs
    FOR EACH ROW
    WHEN (NEW.status IN ('succeeded', 'failed', 'canceled') AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION jobs_notify_finished();
