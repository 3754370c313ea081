-- Tenants and their API keys; every job and model belongs to one tenant. Jobs also gain the
-- lifecycle columns for retries with backoff (`run_after`) and per-job timeouts, and submissions
-- can carry an idempotency key.

CREATE TABLE tenants (
    id             text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    -- s3:// prefixes its jobs may read besides its own prefix in the deployment's bucket
    input_prefixes text[] NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- A key is `gpuq_<id>_<secret>`: `id` finds the row, the secret is only stored as its SHA-256.
CREATE TABLE api_keys (
    id            text PRIMARY KEY,
    tenant_id     text NOT NULL REFERENCES tenants (id),
    secret_sha256 bytea NOT NULL CHECK (length(secret_sha256) = 32),
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);

-- Jobs and models recorded before tenants existed belong to `default`.
INSERT INTO tenants (id) VALUES ('default');

ALTER TABLE jobs ADD COLUMN tenant_id text NOT NULL DEFAULT 'default' REFERENCES tenants (id);
ALTER TABLE jobs ALTER COLUMN tenant_id DROP DEFAULT;
ALTER TABLE models ADD COLUMN tenant_id text NOT NULL DEFAULT 'default' REFERENCES tenants (id);
ALTER TABLE models ALTER COLUMN tenant_id DROP DEFAULT;

-- Wall-clock limit of one attempt, in seconds.
ALTER TABLE jobs ADD COLUMN timeout_s integer NOT NULL DEFAULT 3600 CHECK (timeout_s > 0);
-- A job sent back to the queue after a failure waits until then (exponential backoff, jitter).
ALTER TABLE jobs ADD COLUMN run_after timestamptz;

CREATE INDEX jobs_tenant_id ON jobs (tenant_id, id DESC);
CREATE INDEX models_tenant_id ON models (tenant_id, id DESC);

-- `Idempotency-Key` on submit: the same key and body give the same job.
CREATE TABLE idempotency_keys (
    tenant_id      text NOT NULL REFERENCES tenants (id),
    key            text NOT NULL,
    request_sha256 bytea NOT NULL,
    job_id         uuid NOT NULL REFERENCES jobs (id),
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
);
