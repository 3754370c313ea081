//! The `idempotency_keys` table: a tenant's `Idempotency-Key` and what it made — one job
//! (`POST /v1/jobs`) or one batch (`POST /v1/jobs/batch`, its items kept as JSON) — and the
//! inserts of jobs that go with them.

use super::{DbError, JobRecord, NewJob, job_get, jobs_insert_in};
use crate::domain::JobId;
use crate::queue::JobMessage;
use serde_json::Value;
use sqlx::postgres::PgPool;
use uuid::Uuid;

/// What recording one job found.
#[derive(Debug)]
pub enum Idempotent {
    /// This call recorded the job (its key, if it had one, was new).
    Created(JobRecord),
    /// The key was used before with the same request: its job.
    Existing(JobRecord),
    /// The key was used before with a different request.
    KeyReused,
}

/// An `Idempotency-Key` and the digest of the request that came with it.
#[derive(Debug, Clone)]
pub struct Key {
    pub key: String,
    pub request_sha256: [u8; 32],
}

/// Records a group of jobs, each under its idempotency key or none, in one transaction (one
/// multi-row `INSERT` each for the jobs and the keys): a key the tenant used before records
/// nothing and finds what the earlier request made instead. Concurrent identical submissions
/// make exactly one job. One answer per job, in order, and the messages to publish for the jobs
/// created.
pub async fn jobs_insert_keyed(
    pool: &PgPool,
    jobs: &[(NewJob, Option<Key>)],
) -> Result<(Vec<Idempotent>, Vec<JobMessage>), DbError> {
    let new: Vec<&NewJob> = jobs.iter().map(|(j, _)| j).collect();
    let mut tx = pool.begin().await?;
    let (recorded, messages) = jobs_insert_in(&mut tx, &new).await?;
    // Keys in one order whatever the group's, so two groups never wait on each other's keys.
    let mut keyed: Vec<(&NewJob, &Key)> = jobs
        .iter()
        .filter_map(|(j, k)| k.as_ref().map(|k| (j, k)))
        .collect();
    keyed.sort_by(|a, b| (&a.0.tenant, &a.1.key).cmp(&(&b.0.tenant, &b.1.key)));
    let mut lost: Vec<JobId> = Vec::new();
    if !keyed.is_empty() {
        let claimed: Vec<Uuid> = sqlx::query_scalar(
            "INSERT INTO idempotency_keys (tenant_id, key, request_sha256, job_id)
             SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::uuid[])
             ON CONFLICT DO NOTHING
             RETURNING job_id",
        )
        .bind(
            keyed
                .iter()
                .map(|(j, _)| j.tenant.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            keyed
                .iter()
                .map(|(_, k)| k.key.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            keyed
                .iter()
                .map(|(_, k)| &k.request_sha256[..])
                .collect::<Vec<_>>(),
        )
        .bind(keyed.iter().map(|(j, _)| j.id.0).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        lost = keyed
            .iter()
            .map(|(j, _)| j.id)
            .filter(|id| !claimed.contains(&id.0))
            .collect();
        if !lost.is_empty() {
            sqlx::query("DELETE FROM jobs WHERE id = ANY($1)")
                .bind(lost.iter().map(|id| id.0).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await?;
    let mut answers = Vec::with_capacity(jobs.len());
    for ((job, key), row) in jobs.iter().zip(recorded) {
        let Some(key) = key.as_ref().filter(|_| lost.contains(&job.id)) else {
            answers.push(Idempotent::Created(row));
            continue;
        };
        answers.push(match key_holder(pool, &job.tenant, &key.key).await? {
            Some((hash, Some(job_id), None)) if hash == key.request_sha256 => {
                match job_get(pool, JobId(job_id)).await? {
                    Some(existing) => Idempotent::Existing(existing),
                    None => Idempotent::KeyReused,
                }
            }
            _ => Idempotent::KeyReused,
        });
    }
    let messages = messages
        .into_iter()
        .filter_map(|m| m.without(&lost))
        .collect();
    Ok((answers, messages))
}

/// What recording a batch did.
#[derive(Debug)]
pub enum BatchRecorded {
    /// Its valid jobs, recorded now, in the request's order, and the messages to publish.
    Created(Vec<JobRecord>, Vec<JobMessage>),
    /// The tenant used the key before for the same request: the items recorded then (the
    /// caller reads their jobs again).
    Replayed(Value),
    /// The key was used before with a different request.
    KeyReused,
}

/// Records a batch's valid jobs in one transaction and, under `key`, the batch's `items` (its
/// answer in the request's order, each a job id or an error).
pub async fn jobs_insert_batch(
    pool: &PgPool,
    tenant: &str,
    jobs: &[NewJob],
    idempotency: Option<(&Key, &Value)>,
) -> Result<BatchRecorded, DbError> {
    let mut tx = pool.begin().await?;
    let refs: Vec<&NewJob> = jobs.iter().collect();
    let (recorded, messages) = jobs_insert_in(&mut tx, &refs).await?;
    if let Some((key, items)) = idempotency
        && !claim_key(&mut tx, tenant, key, items).await?
    {
        tx.rollback().await?;
        return match key_holder(pool, tenant, &key.key).await? {
            Some((hash, None, Some(items))) if hash == key.request_sha256 => {
                Ok(BatchRecorded::Replayed(items))
            }
            _ => Ok(BatchRecorded::KeyReused),
        };
    }
    tx.commit().await?;
    Ok(BatchRecorded::Created(recorded, messages))
}

/// Takes `key` for a batch inside `tx`; `false` if someone has it. A concurrent holder of the
/// same key makes this wait for its commit, then do nothing.
async fn claim_key(
    tx: &mut sqlx::PgConnection,
    tenant: &str,
    key: &Key,
    batch: &Value,
) -> Result<bool, DbError> {
    let fresh = sqlx::query(
        "INSERT INTO idempotency_keys (tenant_id, key, request_sha256, batch)
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(tenant)
    .bind(&key.key)
    .bind(&key.request_sha256[..])
    .bind(batch)
    .execute(&mut *tx)
    .await?;
    Ok(fresh.rows_affected() == 1)
}

/// Who holds `key`: the request's digest and its job or its batch.
async fn key_holder(
    pool: &PgPool,
    tenant: &str,
    key: &str,
) -> Result<Option<(Vec<u8>, Option<Uuid>, Option<Value>)>, DbError> {
    sqlx::query_as(
        "SELECT request_sha256, job_id, batch FROM idempotency_keys
         WHERE tenant_id = $1 AND key = $2",
    )
    .bind(tenant)
    .bind(key)
    .fetch_optional(pool)
    .await
}
