//! The `idempotency_keys` table: a tenant's `Idempotency-Key` and the job it made.

use super::{DbError, JobRecord, NewJob, job_get, job_insert_in};
use crate::domain::JobId;
use sqlx::postgres::PgPool;
use uuid::Uuid;

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
