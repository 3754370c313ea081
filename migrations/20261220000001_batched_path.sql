-- The batched job path (issue 11).

-- An idempotency key holds one job (`POST /v1/jobs`) or one batch (`POST /v1/jobs/batch`): the
-- batch's answer in request order, each item a job id or an error, to replay whole.
ALTER TABLE idempotency_keys ALTER COLUMN job_id DROP NOT NULL,
    ADD COLUMN batch jsonb,
    ADD CONSTRAINT idempotency_keys_job_or_batch CHECK ((job_id IS NULL) <> (batch IS NULL));

-- Wake-ups once per statement rather than once per row: a worker that finishes a hundred jobs
-- in one UPDATE sends one notification of their ids (comma-separated, at most 200 to a
-- notification, well inside the 8,000-byte payload limit).
DROP TRIGGER jobs_finished ON jobs;
DROP FUNCTION jobs_notify_finished();

CREATE FUNCTION jobs_notify_finished() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ids text;
BEGIN
    FOR ids IN
        SELECT string_agg(id::text, ',')
        FROM (SELECT n.id, (row_number() OVER () - 1) / 200 AS chunk
              FROM finished_new n JOIN finished_old o ON o.id = n.id
              WHERE n.status IN ('succeeded', 'failed', 'canceled')
                AND o.status IS DISTINCT FROM n.status) f
        GROUP BY chunk
    LOOP
        PERFORM pg_notify('gpuq_job_finished', ids);
    END LOOP;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_finished AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS finished_old NEW TABLE AS finished_new
    FOR EACH STATEMENT
    EXECUTE FUNCTION jobs_notify_finished();
