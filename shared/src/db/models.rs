//! The `models` table: what a finished train job leaves behind.

use super::DbError;
use crate::domain::{Algorithm, JobId, ModelId};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgPool;

/// A trained model as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ModelRecord {
    pub id: ModelId,
    pub tenant_id: String,
    pub algorithm: Algorithm,
    pub job_id: JobId,
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
