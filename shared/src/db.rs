//! The Postgres layer: every SQL statement gpuq runs, one function each, named noun-first.
//! Each job state transition is one function with one guarded `UPDATE`; nothing else writes
//! `status`. Completion writes are fenced by `attempt` so a worker that lost its lease cannot
//! overwrite the work of the one that took the job over.

pub use crate::config::Backoff;
use crate::domain::{JobError, JobId, JobStatus, ModelId};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::time::Duration;
use uuid::Uuid;

pub use sqlx::Error as DbError;

/// Whether an error means the database is (for now) out of reach rather than that the statement
/// was wrong: worth a retry, and `503` at the API.
pub fn is_unavailable(e: &DbError) -> bool {
    match e {
        DbError::Io(_) | DbError::PoolTimedOut | DbError::PoolClosed | DbError::Tls(_) => true,
        DbError::Protocol(_) | DbError::WorkerCrashed => true,
        // SQLSTATE classes 08 (connection exception), 57 (operator intervention: shutdown,
        // restart) and 53 (insufficient resources).
        DbError::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57") || c.starts_with("53")),
        _ => false,
    }
}

/// Connects a pool; `max` bounds its connections. A connection is tested before use, so after a
/// database restart the pool replaces dead connections instead of handing them out.
pub async fn connect(url: &str, max: u32) -> Result<PgPool, DbError> {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(3))
        .test_before_acquire(true)
        .connect(url)
        .await
}

/// As [`connect`], but while the database is unreachable (a fresh deployment, a restart) it
/// waits and tries again, with backoff, until `stop`; `None` when stopped first.
pub async fn connect_waiting(
    url: &str,
    max: u32,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<Option<PgPool>, DbError> {
    let mut delay = Duration::from_millis(250);
    loop {
        match connect(url, max).await {
            Ok(pool) => return Ok(Some(pool)),
            Err(e) if is_unavailable(&e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "database unreachable; waiting");
                tokio::select! {
                    _ = stop.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Applies the migrations in `migrations/` (forward-only).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("../migrations").run(pool).await
}

/// A job as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRecord {
    pub id: Uuid,
    pub tenant_id: String,
    #[sqlx(rename = "type")]
    pub job_type: String,
    pub algorithm: String,
    pub model_id: Option<Uuid>,
    pub status: String,
    pub attempt: i32,
    pub max_attempts: i32,
    pub params: Value,
    pub input: Value,
    pub progress: Option<Value>,
    pub result: Option<Value>,
    pub error: Option<Value>,
    pub attempt_errors: Value,
    pub worker_id: Option<String>,
    pub timeout_s: i32,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl JobRecord {
    pub fn status(&self) -> JobStatus {
        self.status
            .parse()
            .expect("status is constrained by the schema")
    }
}

/// The columns of [`JobRecord`], for `concat!` into each query (sqlx wants static SQL).
macro_rules! job_columns {
    () => {
        "id, tenant_id, type, algorithm, model_id, status, attempt, max_attempts, params, input, \
         progress, result, error, attempt_errors, worker_id, timeout_s, created_at, started_at, \
         finished_at"
    };
}

/// What the API records for a new job.
pub struct NewJob<'a> {
    pub id: JobId,
    pub tenant: &'a str,
    pub job_type: &'a str,
    pub algorithm: &'a str,
    pub model_id: Option<ModelId>,
    pub max_attempts: i32,
    pub params: &'a Value,
    pub input: &'a Value,
    pub timeout_s: i32,
}

pub async fn job_insert(pool: &PgPool, job: &NewJob<'_>) -> Result<JobRecord, DbError> {
    job_insert_in(&mut *pool.acquire().await?, job).await
}

async fn job_insert_in(
    conn: &mut sqlx::PgConnection,
    job: &NewJob<'_>,
) -> Result<JobRecord, DbError> {
    sqlx::query_as(concat!(
        "INSERT INTO jobs (id, tenant_id, type, algorithm, model_id, max_attempts, params, input,
                           timeout_s)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         RETURNING ",
        job_columns!(),
        ""
    ))
    .bind(job.id.0)
    .bind(job.tenant)
    .bind(job.job_type)
    .bind(job.algorithm)
    .bind(job.model_id.map(|m| m.0))
    .bind(job.max_attempts)
    .bind(job.params)
    .bind(job.input)
    .bind(job.timeout_s)
    .fetch_one(conn)
    .await
}

/// What an insert under an idempotency key found.
#[derive(Debug)]
pub enum Idempotent {
    /// The key was new: this call recorded the job.
    Created(JobRecord),
    /// The key was used before with the same request: its job.
    Existing(JobRecord),
    /// The key was used before with a different request.
    KeyReused,
}

/// Records the job unless the tenant used `key` before; the job and the key are written in one
/// transaction, so concurrent identical submissions make exactly one job.
pub async fn job_insert_idempotent(
    pool: &PgPool,
    job: &NewJob<'_>,
    key: &str,
    request_sha256: &[u8],
) -> Result<Idempotent, DbError> {
    let mut tx = pool.begin().await?;
    let created = job_insert_in(&mut tx, job).await?;
    // A concurrent holder of the same key makes this wait for its commit, then do nothing.
    let fresh = sqlx::query(
        "INSERT INTO idempotency_keys (tenant_id, key, request_sha256, job_id)
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(job.tenant)
    .bind(key)
    .bind(request_sha256)
    .bind(job.id.0)
    .execute(&mut *tx)
    .await?;
    if fresh.rows_affected() == 1 {
        tx.commit().await?;
        return Ok(Idempotent::Created(created));
    }
    tx.rollback().await?;
    let (hash, job_id): (Vec<u8>, Uuid) = sqlx::query_as(
        "SELECT request_sha256, job_id FROM idempotency_keys WHERE tenant_id = $1 AND key = $2",
    )
    .bind(job.tenant)
    .bind(key)
    .fetch_one(pool)
    .await?;
    if hash != request_sha256 {
        return Ok(Idempotent::KeyReused);
    }
    let existing = job_get(pool, JobId(job_id)).await?;
    Ok(existing.map_or(Idempotent::KeyReused, Idempotent::Existing))
}

pub async fn job_get(pool: &PgPool, id: JobId) -> Result<Option<JobRecord>, DbError> {
    sqlx::query_as(concat!(
        "SELECT ",
        job_columns!(),
        "
         FROM jobs WHERE id = $1"
    ))
    .bind(id.0)
    .fetch_optional(pool)
    .await
}

/// The job if it belongs to `tenant`: another tenant's job does not exist for this one.
pub async fn job_get_for(
    pool: &PgPool,
    tenant: &str,
    id: JobId,
) -> Result<Option<JobRecord>, DbError> {
    sqlx::query_as(concat!(
        "SELECT ",
        job_columns!(),
        "
         FROM jobs WHERE id = $1 AND tenant_id = $2"
    ))
    .bind(id.0)
    .bind(tenant)
    .fetch_optional(pool)
    .await
}

/// Filters for [`job_list`]; `None` means "any".
#[derive(Debug, Default)]
pub struct JobFilter {
    /// Only this tenant's jobs (always set by the API).
    pub tenant: String,
    pub status: Option<JobStatus>,
    pub job_type: Option<String>,
    /// Cursor: only jobs older than this one (ids are UUIDv7, so id order is time order).
    pub after: Option<JobId>,
    pub limit: i64,
}

/// Newest first.
pub async fn job_list(pool: &PgPool, f: &JobFilter) -> Result<Vec<JobRecord>, DbError> {
    sqlx::query_as(concat!(
        "SELECT ",
        job_columns!(),
        "
         FROM jobs
         WHERE ($1::text IS NULL OR status = $1)
           AND ($2::text IS NULL OR type = $2)
           AND ($3::uuid IS NULL OR id < $3)
           AND tenant_id = $5
         ORDER BY id DESC
         LIMIT $4"
    ))
    .bind(f.status.map(|s| s.as_str()))
    .bind(f.job_type.as_deref())
    .bind(f.after.map(|a| a.0))
    .bind(f.limit)
    .bind(&f.tenant)
    .fetch_all(pool)
    .await
}

/// `queued | running → canceled`. Returns the job as it is afterwards and whether this call
/// canceled it (`false`: it had already finished), or `None` if there is no such job.
pub async fn job_set_canceled(
    pool: &PgPool,
    tenant: &str,
    id: JobId,
) -> Result<Option<(JobRecord, bool)>, DbError> {
    let canceled: Option<JobRecord> = sqlx::query_as(concat!(
        "UPDATE jobs SET status = 'canceled', finished_at = now(), lease_expires_at = NULL
         WHERE id = $1 AND tenant_id = $2 AND status IN ('queued', 'running')
         RETURNING ",
        job_columns!(),
        ""
    ))
    .bind(id.0)
    .bind(tenant)
    .fetch_optional(pool)
    .await?;
    match canceled {
        Some(job) => Ok(Some((job, true))),
        None => Ok(job_get_for(pool, tenant, id).await?.map(|job| (job, false))),
    }
}

/// `queued → running`: the conditional claim. `None` means another worker has it, it was
/// canceled or finished, or it waits out a retry backoff (the reaper publishes it again when
/// that ends): the caller acks the message and moves on.
pub async fn job_set_running(
    pool: &PgPool,
    id: JobId,
    worker_id: &str,
    lease: Duration,
) -> Result<Option<JobRecord>, DbError> {
    sqlx::query_as(concat!(
        "UPDATE jobs SET status = 'running', attempt = attempt + 1, worker_id = $2,
                lease_expires_at = now() + $3 * interval '1 millisecond',
                started_at = COALESCE(started_at, now()), progress = NULL
         WHERE id = $1 AND status = 'queued' AND (run_after IS NULL OR run_after <= now())
         RETURNING ",
        job_columns!(),
        ""
    ))
    .bind(id.0)
    .bind(worker_id)
    .bind(lease.as_millis() as f64)
    .fetch_optional(pool)
    .await
}

/// Extends the lease of a running attempt and, when given, records its progress. `false` means
/// the attempt no longer holds the job (canceled, or the lease expired and the reaper handed it
/// on): the worker must stop.
pub async fn job_heartbeat(
    pool: &PgPool,
    id: JobId,
    attempt: i32,
    lease: Duration,
    progress: Option<&Value>,
) -> Result<bool, DbError> {
    let renewed = sqlx::query(
        "UPDATE jobs SET lease_expires_at = now() + $3 * interval '1 millisecond',
                progress = COALESCE($4, progress)
         WHERE id = $1 AND attempt = $2 AND status = 'running'",
    )
    .bind(id.0)
    .bind(attempt)
    .bind(lease.as_millis() as f64)
    .bind(progress)
    .execute(pool)
    .await?;
    Ok(renewed.rows_affected() == 1)
}

/// `running → succeeded` for an attempt that still holds the job.
pub async fn job_set_succeeded(
    pool: &PgPool,
    id: JobId,
    attempt: i32,
    result: &Value,
) -> Result<bool, DbError> {
    let done = sqlx::query(
        "UPDATE jobs SET status = 'succeeded', result = $3, finished_at = now(),
                lease_expires_at = NULL,
                progress = jsonb_build_object('fraction', 1.0, 'message', 'done')
         WHERE id = $1 AND attempt = $2 AND status = 'running'",
    )
    .bind(id.0)
    .bind(attempt)
    .bind(result)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// What a finished train job leaves behind.
pub struct NewModel<'a> {
    pub id: ModelId,
    pub tenant: &'a str,
    pub algorithm: &'a str,
    pub n_features: i32,
    pub n_classes: i32,
    pub params: &'a Value,
    pub metrics: &'a Value,
    pub artifact_uri: &'a str,
}

/// `running → succeeded` for a train job and its model row, in one transaction: both or neither.
/// `false` (and nothing written) when the attempt no longer holds the job.
pub async fn job_set_succeeded_with_model(
    pool: &PgPool,
    id: JobId,
    attempt: i32,
    result: &Value,
    model: &NewModel<'_>,
) -> Result<bool, DbError> {
    let mut tx = pool.begin().await?;
    let done = sqlx::query(
        "UPDATE jobs SET status = 'succeeded', result = $3, finished_at = now(),
                lease_expires_at = NULL,
                progress = jsonb_build_object('fraction', 1.0, 'message', 'done')
         WHERE id = $1 AND attempt = $2 AND status = 'running'",
    )
    .bind(id.0)
    .bind(attempt)
    .bind(result)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() != 1 {
        tx.rollback().await?;
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO models (id, algorithm, job_id, n_features, n_classes, params, metrics,
                             artifact_uri, tenant_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(model.id.0)
    .bind(model.algorithm)
    .bind(id.0)
    .bind(model.n_features)
    .bind(model.n_classes)
    .bind(model.params)
    .bind(model.metrics)
    .bind(model.artifact_uri)
    .bind(model.tenant)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// The SQL for `now() + backoff(attempt)`, with `$b` the base and `$m` the cap in milliseconds.
macro_rules! backoff_sql {
    ($b:literal, $m:literal) => {
        concat!(
            "now() + least(",
            $m,
            "::float8, ",
            $b,
            "::float8 * power(2, greatest(attempt - 1, 0)))
                * (0.5 + random() / 2) * interval '1 millisecond'"
        )
    };
}

/// A failed attempt: back to `queued` (to run again after a backoff) when the error is retryable
/// and attempts remain, otherwise `failed`. Returns the status the job went to, or `None` when
/// the attempt no longer held it. The reaper publishes the job once its backoff is over.
pub async fn job_set_failed_or_retry(
    pool: &PgPool,
    id: JobId,
    attempt: i32,
    error: &JobError,
    backoff: Backoff,
) -> Result<Option<JobStatus>, DbError> {
    let error_json = serde_json::json!({
        "code": error.code, "message": error.message, "attempt": attempt,
    });
    let status: Option<String> = sqlx::query_scalar(concat!(
        "UPDATE jobs SET
            status = CASE WHEN $4 AND attempt < max_attempts THEN 'queued' ELSE 'failed' END,
            error = CASE WHEN $4 AND attempt < max_attempts THEN NULL ELSE $3 END,
            finished_at = CASE WHEN $4 AND attempt < max_attempts THEN NULL ELSE now() END,
            run_after = ",
        backoff_sql!("$5", "$6"),
        ",
            attempt_errors = attempt_errors || jsonb_build_array($3),
            worker_id = NULL, lease_expires_at = NULL, published_at = NULL
         WHERE id = $1 AND attempt = $2 AND status = 'running'
         RETURNING status"
    ))
    .bind(id.0)
    .bind(attempt)
    .bind(&error_json)
    .bind(error.retryable)
    .bind(backoff.base.as_millis() as f64)
    .bind(backoff.max.as_millis() as f64)
    .fetch_optional(pool)
    .await?;
    Ok(status.map(|s| s.parse().expect("status is constrained by the schema")))
}

/// A worker shutting down hands back a job it could not finish in time: `queued` again at once,
/// without spending an attempt (its `max_attempts` grows by one), with the hand-back recorded
/// among the attempt errors. `false` when the attempt no longer held the job.
pub async fn job_release(
    pool: &PgPool,
    id: JobId,
    attempt: i32,
    reason: &str,
) -> Result<bool, DbError> {
    let released = sqlx::query(
        "UPDATE jobs SET status = 'queued', max_attempts = max_attempts + 1,
            attempt_errors = attempt_errors || jsonb_build_array(jsonb_build_object(
                'code', 'worker_shutdown', 'message', $3::text, 'attempt', attempt)),
            worker_id = NULL, lease_expires_at = NULL, run_after = NULL, published_at = now()
         WHERE id = $1 AND attempt = $2 AND status = 'running'",
    )
    .bind(id.0)
    .bind(attempt)
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(released.rows_affected() == 1)
}

/// Reaper, part one: running jobs whose lease expired (their worker died or froze) go back to
/// `queued` after a backoff, or to `failed` with `lease_expired` once their attempts are spent,
/// so a job that kills every worker that takes it cannot loop forever. Returns how many it
/// moved; part two publishes them when their backoff is over.
pub async fn jobs_requeue_expired(pool: &PgPool, backoff: Backoff) -> Result<u64, DbError> {
    let moved = sqlx::query(concat!(
        "UPDATE jobs SET
            status = CASE WHEN attempt < max_attempts THEN 'queued' ELSE 'failed' END,
            error = CASE WHEN attempt < max_attempts THEN NULL ELSE e.err END,
            finished_at = CASE WHEN attempt < max_attempts THEN NULL ELSE now() END,
            run_after = ",
        backoff_sql!("$1", "$2"),
        ",
            attempt_errors = attempt_errors || jsonb_build_array(e.err),
            worker_id = NULL, lease_expires_at = NULL, published_at = NULL
         FROM (SELECT id AS eid, jsonb_build_object(
                   'code', 'lease_expired',
                   'message', 'worker ' || COALESCE(worker_id, '?')
                              || ' stopped renewing its lease (crashed or frozen)',
                   'attempt', attempt) AS err
               FROM jobs
               WHERE status = 'running' AND lease_expires_at < now()
               ORDER BY lease_expires_at
               LIMIT 1000
               FOR UPDATE SKIP LOCKED) e
         WHERE jobs.id = e.eid"
    ))
    .bind(backoff.base.as_millis() as f64)
    .bind(backoff.max.as_millis() as f64)
    .execute(pool)
    .await?;
    Ok(moved.rows_affected())
}

/// Reaper, part two: `queued` jobs to publish now — those back from a failure whose backoff is
/// over, those whose message never went out (the API died between insert and publish), and
/// those whose message went out `republish_after` ago and was never consumed (lost). Marks them
/// published now and returns them, oldest first.
pub async fn jobs_due_for_publish(
    pool: &PgPool,
    republish_after: Duration,
    limit: i64,
) -> Result<Vec<JobId>, DbError> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE jobs SET published_at = now()
         WHERE id IN (SELECT id FROM jobs
                      WHERE status = 'queued'
                        AND CASE WHEN published_at IS NULL AND run_after IS NOT NULL
                                 THEN run_after <= now()
                                 ELSE COALESCE(published_at, created_at)
                                      < now() - $1 * interval '1 millisecond'
                            END
                      ORDER BY created_at
                      LIMIT $2
                      FOR UPDATE SKIP LOCKED)
         RETURNING id",
    )
    .bind(republish_after.as_millis() as f64)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(ids.into_iter().map(JobId).collect())
}

/// A trained model as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ModelRecord {
    pub id: Uuid,
    pub tenant_id: String,
    pub algorithm: String,
    pub job_id: Uuid,
    pub n_features: i32,
    pub n_classes: i32,
    pub params: Value,
    pub metrics: Value,
    pub artifact_uri: String,
    pub created_at: DateTime<Utc>,
}

macro_rules! model_columns {
    () => {
        "id, tenant_id, algorithm, job_id, n_features, n_classes, params, metrics, artifact_uri, \
         created_at"
    };
}

/// The model if it belongs to `tenant`: another tenant's model does not exist for this one.
pub async fn model_get_for(
    pool: &PgPool,
    tenant: &str,
    id: ModelId,
) -> Result<Option<ModelRecord>, DbError> {
    sqlx::query_as(concat!(
        "SELECT ",
        model_columns!(),
        " FROM models WHERE id = $1 AND tenant_id = $2"
    ))
    .bind(id.0)
    .bind(tenant)
    .fetch_optional(pool)
    .await
}

/// The tenant's models, newest first, after the `after` cursor.
pub async fn model_list(
    pool: &PgPool,
    tenant: &str,
    after: Option<ModelId>,
    limit: i64,
) -> Result<Vec<ModelRecord>, DbError> {
    sqlx::query_as(concat!(
        "SELECT ",
        model_columns!(),
        " FROM models WHERE tenant_id = $1 AND ($2::uuid IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3"
    ))
    .bind(tenant)
    .bind(after.map(|a| a.0))
    .bind(limit)
    .fetch_all(pool)
    .await
}

pub async fn models_for_job(pool: &PgPool, job: JobId) -> Result<i64, DbError> {
    sqlx::query_scalar("SELECT count(*) FROM models WHERE job_id = $1")
        .bind(job.0)
        .fetch_one(pool)
        .await
}

/// A tenant: who owns jobs and models, and which inputs beyond its own prefix it may read.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TenantRecord {
    pub id: String,
    pub input_prefixes: Vec<String>,
}

/// Creates the tenant unless it exists.
pub async fn tenant_ensure(pool: &PgPool, id: &str) -> Result<(), DbError> {
    sqlx::query("INSERT INTO tenants (id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(id)
        .execute(pool)
        .await
        .map(|_| ())
}

pub async fn tenant_get(pool: &PgPool, id: &str) -> Result<Option<TenantRecord>, DbError> {
    sqlx::query_as("SELECT id, input_prefixes FROM tenants WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// Lets the tenant's jobs read under one more `s3://bucket/prefix/`. `false`: no such tenant.
pub async fn tenant_allow_input(pool: &PgPool, id: &str, prefix: &str) -> Result<bool, DbError> {
    let done = sqlx::query(
        "UPDATE tenants SET input_prefixes = array_append(input_prefixes, $2)
         WHERE id = $1 AND NOT ($2 = ANY (input_prefixes))",
    )
    .bind(id)
    .bind(prefix)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1 || tenant_get(pool, id).await?.is_some())
}

pub async fn api_key_insert(
    pool: &PgPool,
    id: &str,
    tenant: &str,
    secret_sha256: &[u8],
) -> Result<(), DbError> {
    sqlx::query("INSERT INTO api_keys (id, tenant_id, secret_sha256) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(tenant)
        .bind(secret_sha256)
        .execute(pool)
        .await
        .map(|_| ())
}

/// A live (unrevoked) key: its tenant and the hash its secret must match.
#[derive(Debug, sqlx::FromRow)]
pub struct ApiKeyRecord {
    pub tenant_id: String,
    pub secret_sha256: Vec<u8>,
    pub input_prefixes: Vec<String>,
}

pub async fn api_key_live(pool: &PgPool, id: &str) -> Result<Option<ApiKeyRecord>, DbError> {
    sqlx::query_as(
        "SELECT k.tenant_id, k.secret_sha256, t.input_prefixes
         FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
         WHERE k.id = $1 AND k.revoked_at IS NULL",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Revokes a key; `false` when there is no such live key.
pub async fn api_key_revoke(pool: &PgPool, id: &str) -> Result<bool, DbError> {
    let done =
        sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
            .bind(id)
            .execute(pool)
            .await?;
    Ok(done.rows_affected() == 1)
}

/// Readiness probe.
pub async fn ping(pool: &PgPool) -> Result<(), DbError> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
}

/// The backlog the scaler sizes the pool by: jobs that may run now (`queued`, past any retry
/// backoff) and jobs running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backlog {
    pub queued: u64,
    pub running: u64,
}

pub async fn backlog(pool: &PgPool) -> Result<Backlog, DbError> {
    let (queued, running): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'queued' AND (run_after IS NULL OR run_after <= now())),
                count(*) FILTER (WHERE status = 'running')
         FROM jobs WHERE status IN ('queued', 'running')",
    )
    .fetch_one(pool)
    .await?;
    Ok(Backlog {
        queued: queued as u64,
        running: running as u64,
    })
}

/// Of the given workers, those that hold a running job.
pub async fn workers_busy(pool: &PgPool, ids: &[String]) -> Result<Vec<String>, DbError> {
    sqlx::query_scalar(
        "SELECT DISTINCT worker_id FROM jobs WHERE status = 'running' AND worker_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// What a worker reports of itself when it starts.
#[derive(Debug, Clone)]
pub struct WorkerReport<'a> {
    pub id: &'a str,
    pub hostname: &'a str,
    pub pid: u32,
    pub adapter: &'a str,
    pub backend: &'a str,
    pub device_type: &'a str,
    pub driver: &'a str,
    pub limits: Value,
    pub concurrency: u32,
    pub version: &'a str,
}

pub async fn worker_register(pool: &PgPool, w: &WorkerReport<'_>) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO workers (id, hostname, pid, adapter, backend, device_type, driver, limits,
                              concurrency, version)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), stopped_at = NULL",
    )
    .bind(w.id)
    .bind(w.hostname)
    .bind(w.pid as i32)
    .bind(w.adapter)
    .bind(w.backend)
    .bind(w.device_type)
    .bind(w.driver)
    .bind(&w.limits)
    .bind(w.concurrency as i32)
    .bind(w.version)
    .execute(pool)
    .await?;
    // Workers that stopped a week ago are history nobody reads.
    sqlx::query("DELETE FROM workers WHERE stopped_at < now() - interval '7 days'")
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn worker_heartbeat(pool: &PgPool, id: &str, running_jobs: u32) -> Result<(), DbError> {
    sqlx::query("UPDATE workers SET heartbeat_at = now(), running_jobs = $2 WHERE id = $1")
        .bind(id)
        .bind(running_jobs as i32)
        .execute(pool)
        .await
        .map(|_| ())
}

pub async fn worker_stopped(pool: &PgPool, id: &str) -> Result<(), DbError> {
    sqlx::query("UPDATE workers SET stopped_at = now(), running_jobs = 0 WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .map(|_| ())
}

/// Workers alive: not stopped, and heard from within `within`.
pub async fn workers_alive(pool: &PgPool, within: Duration) -> Result<i64, DbError> {
    sqlx::query_scalar(
        "SELECT count(*) FROM workers
         WHERE stopped_at IS NULL AND heartbeat_at > now() - $1 * interval '1 millisecond'",
    )
    .bind(within.as_millis() as f64)
    .fetch_one(pool)
    .await
}

/// The pool as the workers report it, newest first: those alive, then those stopped within the
/// last day, each as one JSON object (for `gpuq-api workers`).
pub async fn workers_list(pool: &PgPool, alive_within: Duration) -> Result<Vec<Value>, DbError> {
    sqlx::query_scalar(
        "SELECT to_jsonb(w) FROM (
             SELECT id, stopped_at IS NULL
                        AND heartbeat_at > now() - $1 * interval '1 millisecond' AS alive,
                    running_jobs, concurrency, adapter, backend, device_type, driver, limits,
                    hostname, pid, version, started_at, heartbeat_at, stopped_at
             FROM workers
             WHERE stopped_at IS NULL OR stopped_at > now() - interval '1 day'
             ORDER BY stopped_at IS NULL DESC, started_at DESC
             LIMIT 1000) w",
    )
    .bind(alive_within.as_millis() as f64)
    .fetch_all(pool)
    .await
}
