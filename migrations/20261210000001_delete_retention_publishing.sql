-- Deleting finished jobs and models (by their tenant, or by retention), and the reaper's count
-- of queued jobs believed published.

-- A model outlives the train job that made it: `job_id` stays as provenance, no longer a key.
ALTER TABLE models DROP CONSTRAINT models_job_id_fkey;

-- A job's idempotency key goes with the job.
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_job_id_fkey,
    ADD CONSTRAINT idempotency_keys_job_id_fkey
        FOREIGN KEY (job_id) REFERENCES jobs (id) ON DELETE CASCADE;
CREATE INDEX idempotency_keys_job ON idempotency_keys (job_id);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- Retention finds finished jobs by when they finished.
CREATE INDEX jobs_finished_at ON jobs (finished_at)
    WHERE status IN ('succeeded', 'failed', 'canceled');

-- The reaper counts queued jobs marked published and picks those published longest ago.
CREATE INDEX jobs_queued_published ON jobs (published_at) WHERE status = 'queued';
