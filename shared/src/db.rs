//! The Postgres layer: every SQL statement gpuq runs, one function each, named noun-first.
//! Each job state transition is one function with one guarded `UPDATE`; nothing else writes
//! `status`. Completion writes are fenced by `attempt` so a worker that lost its lease cannot
//! overwrite the work of the one that took the job over.

use crate::domain::{JobError, JobId, JobStatus, ModelId};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::time::Duration;
use uuid::Uuid;

pub use sqlx::Error as DbError;

/// Connects a pool; `max` bounds its connections.
pub async fn connect(url: &str, max: u32) -> Result<PgPool, DbError> {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
}

/// Applies the migrations in `migrations/` (forward-only).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("../migrations").run(pool).await
}

/// A job as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRecord {
    pub id: Uuid,
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
        "id, type, algorithm, model_id, status, attempt, max_attempts, params, input, progress, \
         result, error, attempt_errors, worker_id, created_at, started_at, finished_at"
    };
}

/// What the API records for a new job.
pub struct NewJob<'a> {
    pub id: JobId,
    pub job_type: &'a str,
    pub algorithm: &'a str,
    pub model_id: Option<ModelId>,
    pub max_attempts: i32,
    pub params: &'a Value,
    pub input: &'a Value,
}

pub async fn job_insert(pool: &PgPool, job: &NewJob<'_>) -> Result<JobRecord, DbError> {
    sqlx::query_as(concat!(
        "INSERT INTO jobs (id, type, algorithm, model_id, max_attempts, params, input)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         RETURNING ",
        job_columns!(),
        ""
    ))
    .bind(job.id.0)
    .bind(job.job_type)
    .bind(job.algorithm)
    .bind(job.model_id.map(|m| m.0))
    .bind(job.max_attempts)
    .bind(job.params)
    .bind(job.input)
    .fetch_one(pool)
    .await
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

/// Filters for [`job_list`]; `None` means "any".
#[derive(Debug, Default)]
pub struct JobFilter {
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
         ORDER BY id DESC
         LIMIT $4"
    ))
    .bind(f.status.map(|s| s.as_str()))
    .bind(f.job_type.as_deref())
    .bind(f.after.map(|a| a.0))
    .bind(f.limit)
    .fetch_all(pool)
    .await
}

/// `queued | running → canceled`. Returns the job as it is afterwards and whether this call
/// canceled it (`false`: it had already finished), or `None` if there is no such job.
pub async fn job_set_canceled(
    pool: &PgPool,
    id: JobId,
) -> Result<Option<(JobRecord, bool)>, DbError> {
    let canceled: Option<JobRecord> = sqlx::query_as(concat!(
        "UPDATE jobs SET status = 'canceled', finished_at = now(), lease_expires_at = NULL
         WHERE id = $1 AND status IN ('queued', 'running')
         RETURNING ",
        job_columns!(),
        ""
    ))
    .bind(id.0)
    .fetch_optional(pool)
    .await?;
    match canceled {
        Some(job) => Ok(Some((job, true))),
        None => Ok(job_get(pool, id).await?.map(|job| (job, false))),
    }
}

/// `queued → running`: the conditional claim. `None` means another worker has it, or it was
/// canceled or finished: the caller acks the message and moves on.
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
         WHERE id = $1 AND status = 'queued'
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
                             artifact_uri)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(model.id.0)
    .bind(model.algorithm)
    .bind(id.0)
    .bind(model.n_features)
    .bind(model.n_classes)
    .bind(model.params)
    .bind(model.metrics)
    .bind(model.artifact_uri)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// A failed attempt: back to `queued` when the error is retryable and attempts remain, otherwise
/// `failed`. Returns the status the job went to, or `None` when the attempt no longer held it.
pub async fn job_set_failed_or_retry(
    pool: &PgPool,
    id: JobId,
    attempt: i32,
    error: &JobError,
) -> Result<Option<JobStatus>, DbError> {
    let error_json = serde_json::json!({
        "code": error.code, "message": error.message, "attempt": attempt,
    });
    let status: Option<String> = sqlx::query_scalar(
        "UPDATE jobs SET
            status = CASE WHEN $4 AND attempt < max_attempts THEN 'queued' ELSE 'failed' END,
            error = CASE WHEN $4 AND attempt < max_attempts THEN NULL ELSE $3 END,
            finished_at = CASE WHEN $4 AND attempt < max_attempts THEN NULL ELSE now() END,
            attempt_errors = attempt_errors || jsonb_build_array($3),
            worker_id = NULL, lease_expires_at = NULL, published_at = now()
         WHERE id = $1 AND attempt = $2 AND status = 'running'
         RETURNING status",
    )
    .bind(id.0)
    .bind(attempt)
    .bind(&error_json)
    .bind(error.retryable)
    .fetch_optional(pool)
    .await?;
    Ok(status.map(|s| s.parse().expect("status is constrained by the schema")))
}

/// Reaper, part one: running jobs whose lease expired (their worker died or froze) go back to
/// `queued`, or to `failed` with `lease_expired` once their attempts are spent. Returns the ids
/// that went back to the queue, to be published again.
pub async fn jobs_requeue_expired(pool: &PgPool) -> Result<Vec<JobId>, DbError> {
    let ids: Vec<(Uuid, String)> = sqlx::query_as(
        "UPDATE jobs SET
            status = CASE WHEN attempt < max_attempts THEN 'queued' ELSE 'failed' END,
            error = CASE WHEN attempt < max_attempts THEN NULL ELSE e.err END,
            finished_at = CASE WHEN attempt < max_attempts THEN NULL ELSE now() END,
            attempt_errors = attempt_errors || jsonb_build_array(e.err),
            worker_id = NULL, lease_expires_at = NULL, published_at = now()
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
         WHERE jobs.id = e.eid
         RETURNING jobs.id, jobs.status",
    )
    .fetch_all(pool)
    .await?;
    Ok(ids
        .into_iter()
        .filter(|(_, s)| s == "queued")
        .map(|(id, _)| JobId(id))
        .collect())
}

/// Reaper, part two: `queued` jobs whose message never went out (the API died between insert and
/// publish) or went out `republish_after` ago and was never consumed (lost). Marks them published
/// now and returns them, oldest first.
pub async fn jobs_due_for_publish(
    pool: &PgPool,
    republish_after: Duration,
    limit: i64,
) -> Result<Vec<JobId>, DbError> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE jobs SET published_at = now()
         WHERE id IN (SELECT id FROM jobs
                      WHERE status = 'queued'
                        AND COALESCE(published_at, created_at)
                            < now() - $1 * interval '1 millisecond'
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
    pub algorithm: String,
    pub job_id: Uuid,
    pub n_features: i32,
    pub n_classes: i32,
    pub params: Value,
    pub metrics: Value,
    pub artifact_uri: String,
    pub created_at: DateTime<Utc>,
}

pub async fn model_get(pool: &PgPool, id: ModelId) -> Result<Option<ModelRecord>, DbError> {
    sqlx::query_as(
        "SELECT id, algorithm, job_id, n_features, n_classes, params, metrics, artifact_uri,
                created_at
         FROM models WHERE id = $1",
    )
    .bind(id.0)
    .fetch_optional(pool)
    .await
}

/// Newest first, after the `after` cursor.
pub async fn model_list(
    pool: &PgPool,
    after: Option<ModelId>,
    limit: i64,
) -> Result<Vec<ModelRecord>, DbError> {
    sqlx::query_as(
        "SELECT id, algorithm, job_id, n_features, n_classes, params, metrics, artifact_uri,
                created_at
         FROM models WHERE ($1::uuid IS NULL OR id < $1)
         ORDER BY id DESC LIMIT $2",
    )
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

/// Readiness probe.
pub async fn ping(pool: &PgPool) -> Result<(), DbError> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
}
