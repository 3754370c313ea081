//! Deleting finished work: a finished job (by its tenant, or once older than the deployment
//! keeps jobs), and idempotency keys past their retention. A job's idempotency key goes with it
//! (`ON DELETE CASCADE`); a model outlives the train job that made it (its `job_id` stays as
//! provenance).

use super::DbError;
use crate::domain::{JobId, JobType, ModelId};
use serde_json::Value;
use sqlx::postgres::PgPool;
use std::time::Duration;
use uuid::Uuid;

/// What deleting a finished job needs to know: whose it is and where its outputs went.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FinishedJob {
    pub id: JobId,
    pub tenant_id: String,
    #[sqlx(rename = "type")]
    pub job_type: JobType,
    pub result: Option<Value>,
}

/// Deletes the tenant's job if it has finished. `false`: no such finished job (another
/// tenant's, still queued or running, or already deleted).
pub async fn job_delete_finished(pool: &PgPool, tenant: &str, id: JobId) -> Result<bool, DbError> {
    let deleted = sqlx::query(
        "DELETE FROM jobs
         WHERE id = $1 AND tenant_id = $2 AND status IN ('succeeded', 'failed', 'canceled')",
    )
    .bind(id.0)
    .bind(tenant)
    .execute(pool)
    .await?;
    Ok(deleted.rows_affected() == 1)
}

/// Up to `limit` jobs that finished more than `older_than` ago, oldest first.
pub async fn jobs_finished_before(
    pool: &PgPool,
    older_than: Duration,
    limit: i64,
) -> Result<Vec<FinishedJob>, DbError> {
    sqlx::query_as(
        "SELECT id, tenant_id, type, result FROM jobs
         WHERE status IN ('succeeded', 'failed', 'canceled')
           AND finished_at < now() - $1 * interval '1 millisecond'
         ORDER BY finished_at
         LIMIT $2",
    )
    .bind(older_than.as_millis() as f64)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Deletes these jobs, if finished. Returns how many went.
pub async fn jobs_delete_finished(pool: &PgPool, ids: &[JobId]) -> Result<u64, DbError> {
    let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
    let deleted = sqlx::query(
        "DELETE FROM jobs
         WHERE id = ANY($1) AND status IN ('succeeded', 'failed', 'canceled')",
    )
    .bind(&ids)
    .execute(pool)
    .await?;
    Ok(deleted.rows_affected())
}

/// Deletes up to `limit` idempotency keys made more than `older_than` ago (their jobs stay).
pub async fn idempotency_keys_delete_before(
    pool: &PgPool,
    older_than: Duration,
    limit: i64,
) -> Result<u64, DbError> {
    let deleted = sqlx::query(
        "DELETE FROM idempotency_keys
         WHERE (tenant_id, key) IN (
             SELECT tenant_id, key FROM idempotency_keys
             WHERE created_at < now() - $1 * interval '1 millisecond'
             LIMIT $2)",
    )
    .bind(older_than.as_millis() as f64)
    .bind(limit)
    .execute(pool)
    .await?;
    Ok(deleted.rows_affected())
}

/// Deletes the tenant's model. `false`: no such model (or another tenant's).
pub async fn model_delete(pool: &PgPool, tenant: &str, id: ModelId) -> Result<bool, DbError> {
    let deleted = sqlx::query("DELETE FROM models WHERE id = $1 AND tenant_id = $2")
        .bind(id.0)
        .bind(tenant)
        .execute(pool)
        .await?;
    Ok(deleted.rows_affected() == 1)
}
