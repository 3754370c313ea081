-- Batchable jobs recorded together share one AMQP message (queue::JobMessage::Batch). Their
-- rows carry the message's id (its first job's id), so the reaper can count the messages the
-- queue should hold: one per shared id, plus one per job without. Whoever publishes a job again
-- (the reaper, a retry) clears it: the job then has a message of its own.
ALTER TABLE jobs ADD COLUMN message_id uuid;

-- Every job update changes `status`, so each is a new row version with an entry in every index:
-- keep only indexes a query uses. Listing is always by tenant (`jobs_list`), so the status filter
-- is served by tenant and status; no query filters by type alone.
DROP INDEX jobs_type_id;
DROP INDEX jobs_status_id;
CREATE INDEX jobs_tenant_status_id ON jobs (tenant_id, status, id DESC);
