//! The `jobs` table: the job state machine (`queued → running → succeeded | failed | canceled`),
//! one guarded `UPDATE` per transition, and the reaper's and scaler's queries over it.

use super::{Backoff, DbError};
use crate::domain::{Algorithm, JobId, JobStatus, JobType, ModelId};
use crate::error::JobError;
use crate::job::JobSpec;
use crate::queue::JobMessage;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgListener, PgPool};
use std::time::Duration;
use uuid::Uuid;

/// A job as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRecord {
    pub id: JobId,
    pub tenant_id: String,
    #[sqlx(rename = "type")]
    pub job_type: JobType,
    /// A train job's algorithm, or the algorithm of an infer job's model.
    pub algorithm: Algorithm,
    pub model_id: Option<ModelId>,
    pub status: JobStatus,
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
    /// What to run, typed, from the recorded params and input.
    pub fn spec(&self) -> Result<JobSpec, JobError> {
        JobSpec::from_stored(
            self.job_type,
            self.algorithm,
            self.model_id,
            &self.params,
            &self.input,
        )
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
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: JobId,
    pub tenant: String,
    pub spec: JobSpec,
    /// The train job's algorithm, or the infer job's model's.
    pub algorithm: Algorithm,
    pub max_attempts: i32,
    pub timeout_s: i32,
}

/// Records the jobs, inside the caller's transaction, in one multi-row `INSERT` from arrays (a
/// group of a thousand costs one statement, not a thousand), returned in the order given, with
/// the messages that announce them ([`JobMessage::announce`]; the jobs of a shared message
/// record its id in `message_id`).
/// They are recorded as published: the API publishes them right after the commit, and marks
/// them unpublished ([`jobs_set_unpublished`]) if the broker refuses, so the reaper publishes them
/// within its grace. An API that dies between the two leaves them to the reaper's lost-message
/// rule (`reaper.rs`), within `republish_after`. (Marking them only once the broker confirmed
/// cost every job one more row version.)
pub(super) async fn jobs_insert_in(
    conn: &mut sqlx::PgConnection,
    jobs: &[&NewJob],
) -> Result<(Vec<JobRecord>, Vec<JobMessage>), DbError> {
    if jobs.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let messages = JobMessage::announce(jobs.iter().map(|j| (j.id, j.spec.batchable())));
    let shared: std::collections::HashMap<JobId, Uuid> = messages
        .iter()
        .filter_map(|m| m.shared_id().map(|shared| (m, shared)))
        .flat_map(|(m, shared)| m.jobs().iter().map(move |id| (*id, shared.0)))
        .collect();
    let n = jobs.len();
    let (mut ids, mut tenants, mut types, mut algorithms, mut models) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut attempts, mut params, mut inputs, mut timeouts) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let mut records = Vec::with_capacity(n);
    for job in jobs {
        let model_id = match &job.spec.work {
            crate::job::Work::Infer { model_id, .. } => Some(*model_id),
            crate::job::Work::Train(_) => None,
        };
        let (job_params, job_input) = (
            job.spec.params_json(),
            serde_json::to_value(&job.spec.input).expect("an input serialises"),
        );
        ids.push(job.id.0);
        tenants.push(job.tenant.as_str());
        types.push(job.spec.job_type().as_str());
        algorithms.push(job.algorithm.as_str());
        models.push(model_id.map(|m| m.0));
        attempts.push(job.max_attempts);
        params.push(job_params.to_string());
        inputs.push(job_input.to_string());
        timeouts.push(job.timeout_s);
        // The row as the INSERT writes it, less `created_at` (the statement returns it): no
        // need to send the inputs back.
        records.push(JobRecord {
            id: job.id,
            tenant_id: job.tenant.clone(),
            job_type: job.spec.job_type(),
            algorithm: job.algorithm,
            model_id,
            status: JobStatus::Queued,
            attempt: 0,
            max_attempts: job.max_attempts,
            params: job_params,
            input: job_input,
            progress: None,
            result: None,
            error: None,
            attempt_errors: Value::Array(Vec::new()),
            worker_id: None,
            timeout_s: job.timeout_s,
            created_at: DateTime::<Utc>::MIN_UTC,
            started_at: None,
            finished_at: None,
        });
    }
    let message_ids: Vec<Option<Uuid>> = jobs.iter().map(|j| shared.get(&j.id).copied()).collect();
    let created: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
        "INSERT INTO jobs (id, tenant_id, type, algorithm, model_id, max_attempts, params, input,
                           timeout_s, published_at, message_id)
         SELECT id, tenant_id, type, algorithm, model_id, max_attempts, params::jsonb,
                input::json, timeout_s, now(), message_id
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::uuid[], $6::int4[],
                     $7::text[], $8::text[], $9::int4[], $10::uuid[])
              AS j(id, tenant_id, type, algorithm, model_id, max_attempts, params, input,
                   timeout_s, message_id)
         RETURNING id, created_at",
    )
    .bind(ids)
    .bind(tenants)
    .bind(types)
    .bind(algorithms)
    .bind(models)
    .bind(attempts)
    .bind(params)
    .bind(inputs)
    .bind(timeouts)
    .bind(message_ids)
    .fetch_all(conn)
    .await?;
    // One statement, one `now()`: every row has the same `created_at`.
    let created_at = created.first().map(|(_, at)| *at).unwrap_or_default();
    for record in &mut records {
        record.created_at = created_at;
    }
    Ok((records, messages))
}

/// Puts `rows` in the order of `ids` (a statement's `RETURNING` order is not promised).
fn in_order(rows: &mut [JobRecord], ids: impl Iterator<Item = JobId>) {
    let rank: std::collections::HashMap<JobId, usize> =
        ids.enumerate().map(|(i, id)| (id, i)).collect();
    rows.sort_by_key(|r| rank.get(&r.id).copied().unwrap_or(usize::MAX));
}

/// The jobs among `ids` that exist, in the order of `ids`.
pub async fn jobs_get(pool: &PgPool, ids: &[JobId]) -> Result<Vec<JobRecord>, DbError> {
    let raw: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
    let mut rows: Vec<JobRecord> = sqlx::query_as(concat!(
        "SELECT ",
        job_columns!(),
        "
         FROM jobs WHERE id = ANY($1)"
    ))
    .bind(raw)
    .fetch_all(pool)
    .await?;
    in_order(&mut rows, ids.iter().copied());
    Ok(rows)
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
    pub job_type: Option<JobType>,
    /// Cursor: only jobs older than this one (ids are UUIDv7, so id order is time order).
    pub after: Option<JobId>,
    pub limit: i64,
}

/// Newest first, each job as a list shows it: its `input` is a summary (the uri, or the inline
/// rows' count and width, as [`Input::summary`] makes it) and its `result` has no inline
/// `predictions`, so a page's size does not grow with what its jobs carry. Summarised in SQL, so
/// the rows never leave Postgres either.
pub async fn job_list(pool: &PgPool, f: &JobFilter) -> Result<Vec<JobRecord>, DbError> {
    sqlx::query_as(
        "SELECT id, tenant_id, type, algorithm, model_id, status, attempt, max_attempts, params,
                CASE WHEN input->'uri' IS NOT NULL THEN json_build_object('uri', input->'uri')
                     ELSE json_build_object('inline', json_build_object(
                              'rows', json_array_length(input->'rows'),
                              'width', json_array_length(input->'rows'->0),
                              'labels', input->'labels' IS NOT NULL))
                END AS input,
                progress, result - 'predictions' AS result, error, attempt_errors, worker_id,
                timeout_s, created_at, started_at, finished_at
         FROM jobs
         WHERE ($1::text IS NULL OR status = $1)
           AND ($2::text IS NULL OR type = $2)
           AND ($3::uuid IS NULL OR id < $3)
           AND tenant_id = $5
         ORDER BY id DESC
         LIMIT $4",
    )
    .bind(f.status)
    .bind(f.job_type)
    .bind(f.after.map(|a| a.0))
    .bind(f.limit)
    .bind(&f.tenant)
    .fetch_all(pool)
    .await
}

/// The channel a cancel of a running job is announced on (payload: the job id), so the worker
/// that runs it stops at once rather than at its next lease renewal.
pub const JOB_CANCELED_CHANNEL: &str = "gpuq_job_canceled";

/// `queued | running → canceled`. Returns the job as it is afterwards and whether this call
/// canceled it (`false`: it had already finished), or `None` if there is no such job. Canceling
/// a running job NOTIFYs [`JOB_CANCELED_CHANNEL`] in the same transaction.
pub async fn job_set_canceled(
    pool: &PgPool,
    tenant: &str,
    id: JobId,
) -> Result<Option<(JobRecord, bool)>, DbError> {
    let mut tx = pool.begin().await?;
    let canceled: Option<JobRecord> = sqlx::query_as(concat!(
        "UPDATE jobs SET status = 'canceled', finished_at = now(), lease_expires_at = NULL
         WHERE id = $1 AND tenant_id = $2 AND status IN ('queued', 'running')
         RETURNING ",
        job_columns!(),
        ""
    ))
    .bind(id.0)
    .bind(tenant)
    .fetch_optional(&mut *tx)
    .await?;
    // Only a claimed job has a worker to tell (a queued one has none: it is cleared on requeue).
    if canceled.as_ref().is_some_and(|j| j.worker_id.is_some()) {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(JOB_CANCELED_CHANNEL)
            .bind(id.0.to_string())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    match canceled {
        Some(job) => Ok(Some((job, true))),
        None => Ok(job_get_for(pool, tenant, id).await?.map(|job| (job, false))),
    }
}

/// A listener on [`JOB_CANCELED_CHANNEL`]. It holds one of the pool's connections; after a lost
/// connection it reconnects and listens again by itself (`try_recv` answers `Ok(None)`), and
/// whatever was sent meanwhile is lost.
pub async fn job_canceled_listener(pool: &PgPool) -> Result<PgListener, DbError> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(JOB_CANCELED_CHANNEL).await?;
    Ok(listener)
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
    Ok(jobs_set_running(pool, &[id], worker_id, lease).await?.pop())
}

/// `queued → running` for many jobs in one statement: the batch claim. Returns the jobs this
/// worker now holds (in the order of `ids`); the others are another worker's, canceled,
/// finished or waiting out a backoff, exactly as for [`job_set_running`].
pub async fn jobs_set_running(
    pool: &PgPool,
    ids: &[JobId],
    worker_id: &str,
    lease: Duration,
) -> Result<Vec<JobRecord>, DbError> {
    // Rows are locked in id order (every multi-row statement here does so), whatever order the
    // messages came in: two statements over the same jobs wait for each other, never deadlock.
    let raw: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
    let mut rows: Vec<JobRecord> = sqlx::query_as(concat!(
        "WITH claimable AS (
             SELECT id AS claimable_id FROM jobs
             WHERE id = ANY($1) AND status = 'queued' AND (run_after IS NULL OR run_after <= now())
             ORDER BY id
             FOR UPDATE)
         UPDATE jobs SET status = 'running', attempt = attempt + 1, worker_id = $2,
                lease_expires_at = now() + $3 * interval '1 millisecond',
                started_at = COALESCE(started_at, now()), progress = NULL
         FROM claimable WHERE jobs.id = claimable.claimable_id
         RETURNING ",
        job_columns!(),
        ""
    ))
    .bind(raw)
    .bind(worker_id)
    .bind(lease.as_millis() as f64)
    .fetch_all(pool)
    .await?;
    in_order(&mut rows, ids.iter().copied());
    Ok(rows)
}

/// One attempt's success, for [`jobs_set_succeeded`].
#[derive(Debug, Clone)]
pub struct Succeeded {
    pub id: JobId,
    pub attempt: i32,
    pub result: Value,
}

/// `running → succeeded` for many jobs in one statement (one commit, one wake-up), each fenced
/// by its attempt as [`job_set_succeeded`] is. Returns the ids written; an attempt left out had
/// lost its job.
pub async fn jobs_set_succeeded(pool: &PgPool, done: &[Succeeded]) -> Result<Vec<JobId>, DbError> {
    succeed_many(pool, done, None).await
}

/// The jobs among `ids` that a worker may run now (`queued`, past any retry backoff), read
/// without claiming them, for [`jobs_set_succeeded_unclaimed`].
pub async fn jobs_get_runnable(pool: &PgPool, ids: &[JobId]) -> Result<Vec<JobRecord>, DbError> {
    let raw: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
    let mut rows: Vec<JobRecord> = sqlx::query_as(concat!(
        "SELECT ",
        job_columns!(),
        "
         FROM jobs
         WHERE id = ANY($1) AND status = 'queued' AND (run_after IS NULL OR run_after <= now())"
    ))
    .bind(raw)
    .fetch_all(pool)
    .await?;
    in_order(&mut rows, ids.iter().copied());
    Ok(rows)
}

/// `queued → succeeded` in one step for jobs run without a claim (small inference a worker ran in
/// milliseconds, [`jobs_get_runnable`]): one row version per job instead of two. Each is fenced by
/// the attempt it was read at, and written only if still `queued`: a cancel, or another worker
/// that ran a duplicate delivery first, wins, and this result is dropped. The attempt is counted
/// as if claimed at `started_at`. Returns the ids written.
pub async fn jobs_set_succeeded_unclaimed(
    pool: &PgPool,
    worker_id: &str,
    started_at: DateTime<Utc>,
    done: &[Succeeded],
) -> Result<Vec<JobId>, DbError> {
    succeed_many(pool, done, Some((worker_id, started_at))).await
}

/// The two above: from `running` (`unclaimed` is `None`), or from `queued`, counting the attempt
/// for the worker and start time given. Rows are locked in id order, as everywhere.
async fn succeed_many(
    pool: &PgPool,
    done: &[Succeeded],
    unclaimed: Option<(&str, DateTime<Utc>)>,
) -> Result<Vec<JobId>, DbError> {
    if done.is_empty() {
        return Ok(Vec::new());
    }
    let mut done: Vec<&Succeeded> = done.iter().collect();
    done.sort_by_key(|d| d.id.0);
    let ids: Vec<Uuid> = done.iter().map(|d| d.id.0).collect();
    let attempts: Vec<i32> = done.iter().map(|d| d.attempt).collect();
    let results: Vec<String> = done.iter().map(|d| d.result.to_string()).collect();
    let from = if unclaimed.is_some() {
        "queued"
    } else {
        "running"
    };
    let written: Vec<Uuid> = sqlx::query_scalar(
        "WITH d AS (SELECT * FROM unnest($1::uuid[], $2::int4[], $3::text[])
                        AS d(id, attempt, result)),
              held AS (SELECT jobs.id FROM jobs JOIN d ON d.id = jobs.id
                       WHERE jobs.attempt = d.attempt AND jobs.status = $4
                       ORDER BY jobs.id
                       FOR UPDATE OF jobs)
         UPDATE jobs SET status = 'succeeded', result = d.result::jsonb, finished_at = now(),
                lease_expires_at = NULL,
                attempt = jobs.attempt + CASE WHEN $4 = 'queued' THEN 1 ELSE 0 END,
                worker_id = COALESCE($5, jobs.worker_id),
                started_at = COALESCE(jobs.started_at, $6),
                progress = jsonb_build_object('fraction', 1.0, 'message', 'done')
         FROM d, held
         WHERE jobs.id = d.id AND jobs.id = held.id AND jobs.attempt = d.attempt
           AND jobs.status = $4
         RETURNING jobs.id",
    )
    .bind(ids)
    .bind(attempts)
    .bind(results)
    .bind(from)
    .bind(unclaimed.map(|(worker, _)| worker))
    .bind(unclaimed.map(|(_, at)| at))
    .fetch_all(pool)
    .await?;
    Ok(written.into_iter().map(JobId).collect())
}

/// One job's lease as its worker holds it, for [`jobs_renew_leases`].
#[derive(Debug, Clone)]
pub struct HeldLease {
    pub id: JobId,
    pub attempt: i32,
    /// Progress reported since the last renewal, if any.
    pub progress: Option<Value>,
}

/// A worker's lease renewal: extends the lease of every attempt it holds, and records the
/// progress given with each, in one statement. Returns the ids it renewed; a job left out no
/// longer belongs to that attempt (canceled, or its lease expired and the reaper handed it on),
/// and its worker must stop it.
pub async fn jobs_renew_leases(
    pool: &PgPool,
    held: &[HeldLease],
    lease: Duration,
) -> Result<Vec<JobId>, DbError> {
    // Rows are locked in id order, whatever order the caller holds them in.
    let mut held: Vec<&HeldLease> = held.iter().collect();
    held.sort_by_key(|h| h.id.0);
    let ids: Vec<Uuid> = held.iter().map(|h| h.id.0).collect();
    let attempts: Vec<i32> = held.iter().map(|h| h.attempt).collect();
    let progress: Vec<Option<&Value>> = held.iter().map(|h| h.progress.as_ref()).collect();
    let renewed: Vec<Uuid> = sqlx::query_scalar(
        "WITH h AS (SELECT * FROM unnest($1::uuid[], $2::int4[], $3::jsonb[])
                        AS h(id, attempt, progress)),
              held AS (SELECT jobs.id FROM jobs JOIN h ON h.id = jobs.id
                       WHERE jobs.attempt = h.attempt AND jobs.status = 'running'
                       ORDER BY jobs.id
                       FOR UPDATE OF jobs)
         UPDATE jobs SET lease_expires_at = now() + $4 * interval '1 millisecond',
                progress = COALESCE(h.progress, jobs.progress)
         FROM h, held
         WHERE jobs.id = h.id AND jobs.id = held.id AND jobs.attempt = h.attempt
           AND jobs.status = 'running'
         RETURNING jobs.id",
    )
    .bind(ids)
    .bind(attempts)
    .bind(progress)
    .bind(lease.as_millis() as f64)
    .fetch_all(pool)
    .await?;
    Ok(renewed.into_iter().map(JobId).collect())
}

/// `running → succeeded` for an attempt that still holds the job.
pub async fn job_set_succeeded(
    pool: &PgPool,
    id: JobId,
    attempt: i32,
    result: &Value,
) -> Result<bool, DbError> {
    job_set_succeeded_in(&mut *pool.acquire().await?, id, attempt, result).await
}

/// The one `running → succeeded` statement, fenced by the attempt.
async fn job_set_succeeded_in(
    conn: &mut sqlx::PgConnection,
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
    .bind(id)
    .bind(attempt)
    .bind(result)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// What a finished train job leaves behind.
pub struct NewModel<'a> {
    pub id: ModelId,
    pub tenant: &'a str,
    pub algorithm: Algorithm,
    pub n_features: i32,
    pub n_classes: i32,
    pub params: &'a Value,
    pub metrics: &'a Value,
    pub artifact_uri: &'a str,
    /// A fleet's groups, each trained (model id, slot) or failed.
    pub fleet: Option<&'a [NewMember]>,
}

/// One group of a new fleet.
#[derive(Debug, Clone)]
pub struct NewMember {
    pub group_key: String,
    pub outcome: Result<(ModelId, u32), Value>,
    pub metrics: Option<Value>,
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
    if !job_set_succeeded_in(&mut tx, id, attempt, result).await? {
        tx.rollback().await?;
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO models (id, algorithm, job_id, n_features, n_classes, params, metrics,
                             artifact_uri, tenant_id, groups)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
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
    .bind(
        model
            .fleet
            .map(|m| m.iter().filter(|m| m.outcome.is_ok()).count() as i32),
    )
    .execute(&mut *tx)
    .await?;
    if let Some(members) = model.fleet {
        fleet_members_insert(&mut tx, model.id, members).await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// A new fleet's groups, in one statement.
async fn fleet_members_insert(
    tx: &mut sqlx::PgConnection,
    fleet: ModelId,
    members: &[NewMember],
) -> Result<(), DbError> {
    let keys: Vec<&str> = members.iter().map(|m| m.group_key.as_str()).collect();
    let ok = |m: &NewMember| m.outcome.as_ref().ok().copied();
    let ids: Vec<Option<uuid::Uuid>> = members.iter().map(|m| ok(m).map(|(id, _)| id.0)).collect();
    let slots: Vec<Option<i32>> = members
        .iter()
        .map(|m| ok(m).map(|(_, s)| s as i32))
        .collect();
    let metrics: Vec<Option<Value>> = members.iter().map(|m| m.metrics.clone()).collect();
    let errors: Vec<Option<Value>> = members
        .iter()
        .map(|m| m.outcome.as_ref().err().cloned())
        .collect();
    sqlx::query(
        "INSERT INTO fleet_members (fleet_id, group_key, model_id, slot, metrics, error)
         SELECT $1, * FROM UNNEST($2::text[], $3::uuid[], $4::int4[], $5::jsonb[], $6::jsonb[])",
    )
    .bind(fleet.0)
    .bind(keys)
    .bind(ids)
    .bind(slots)
    .bind(metrics)
    .bind(errors)
    .execute(&mut *tx)
    .await?;
    Ok(())
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
    sqlx::query_scalar(concat!(
        "UPDATE jobs SET
            status = CASE WHEN $4 AND attempt < max_attempts THEN 'queued' ELSE 'failed' END,
            error = CASE WHEN $4 AND attempt < max_attempts THEN NULL ELSE $3 END,
            finished_at = CASE WHEN $4 AND attempt < max_attempts THEN NULL ELSE now() END,
            run_after = ",
        backoff_sql!("$5", "$6"),
        ",
            attempt_errors = attempt_errors || jsonb_build_array($3),
            worker_id = NULL, lease_expires_at = NULL, published_at = NULL, message_id = NULL
         WHERE id = $1 AND attempt = $2 AND status = 'running'
         RETURNING status"
    ))
    .bind(id.0)
    .bind(attempt)
    .bind(&error_json)
    .bind(error.retryable())
    .bind(backoff.base.as_millis() as f64)
    .bind(backoff.max.as_millis() as f64)
    .fetch_optional(pool)
    .await
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
            worker_id = NULL, lease_expires_at = NULL, run_after = NULL, published_at = now(),
            message_id = NULL
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
            worker_id = NULL, lease_expires_at = NULL, published_at = NULL, message_id = NULL
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

/// Reaper, part two: `queued` jobs whose message never went out — back from a failure whose
/// backoff is over, or recorded `grace` ago and still not marked published (the API's publish
/// failed, or it died before it). Marks them published now and returns them, oldest first.
pub async fn jobs_due_for_publish(
    pool: &PgPool,
    grace: Duration,
    limit: i64,
) -> Result<Vec<JobId>, DbError> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE jobs SET published_at = now(), message_id = NULL
         WHERE id IN (SELECT id FROM jobs
                      WHERE status = 'queued' AND published_at IS NULL
                        AND COALESCE(run_after, created_at + $1 * interval '1 millisecond')
                            <= now()
                      ORDER BY created_at
                      LIMIT $2
                      FOR UPDATE SKIP LOCKED)
         RETURNING id",
    )
    .bind(grace.as_millis() as f64)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(ids.into_iter().map(JobId).collect())
}

/// How many messages the broker should hold: one per `queued` job marked published, except that
/// the jobs of a shared message (`message_id`) count once.
pub async fn jobs_count_published(pool: &PgPool) -> Result<u64, DbError> {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE message_id IS NULL) + count(DISTINCT message_id)
         FROM jobs WHERE status = 'queued' AND published_at IS NOT NULL",
    )
    .fetch_one(pool)
    .await?;
    Ok(n as u64)
}

/// Reaper, part three: the `queued` jobs of up to `limit` messages published more than
/// `republish_after` ago, longest-published first, to publish again (each job in a message of its
/// own) because the broker holds fewer messages than it should (the reaper's rule, in
/// `reaper.rs`). Marks them published now.
pub async fn jobs_republish_stale(
    pool: &PgPool,
    republish_after: Duration,
    limit: i64,
) -> Result<Vec<JobId>, DbError> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE jobs SET published_at = now(), message_id = NULL
         WHERE id IN (SELECT id FROM jobs
                      WHERE status = 'queued'
                        AND COALESCE(message_id, id) IN (
                            SELECT COALESCE(message_id, id) FROM jobs
                            WHERE status = 'queued'
                              AND published_at < now() - $1 * interval '1 millisecond'
                              AND (run_after IS NULL OR run_after <= now())
                            GROUP BY 1
                            ORDER BY min(published_at)
                            LIMIT $2)
                      FOR UPDATE SKIP LOCKED)
         RETURNING id",
    )
    .bind(republish_after.as_millis() as f64)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(ids.into_iter().map(JobId).collect())
}

/// Jobs the reaper marked published but could not publish (the broker failed mid-batch): not
/// published after all, so the next sweep publishes them again.
pub async fn jobs_set_unpublished(pool: &PgPool, ids: &[JobId]) -> Result<(), DbError> {
    let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
    sqlx::query(
        "UPDATE jobs SET published_at = NULL, message_id = NULL
         WHERE id = ANY($1) AND status = 'queued'",
    )
    .bind(&ids)
    .execute(pool)
    .await?;
    Ok(())
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
