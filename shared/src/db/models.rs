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
    /// A fleet: how many groups it trained (`None` for one model).
    pub groups: Option<i32>,
    /// A fleet member: its fleet, its group and its slot on the artifact's group axis. The
    /// record is then the fleet's (artifact, params, job) with the member's id and metrics.
    pub fleet_id: Option<ModelId>,
    pub group_key: Option<String>,
    pub slot: Option<i32>,
}

impl ModelRecord {
    /// A fleet member's (fleet, slot).
    pub fn member(&self) -> Option<(ModelId, u32)> {
        Some((self.fleet_id?, u32::try_from(self.slot?).ok()?))
    }
}

macro_rules! model_columns {
    () => {
        "id, tenant_id, algorithm, job_id, n_features, n_classes, params, metrics, artifact_uri, \
         created_at, groups, NULL::uuid AS fleet_id, NULL::text AS group_key, NULL::int4 AS slot"
    };
}

/// Selects models (`$1`: their ids) of a tenant (`$2`) and fleet members, as model records.
macro_rules! models_and_members {
    ($models:literal, $members:literal) => {
        concat!(
            "SELECT ",
            model_columns!(),
            " FROM models WHERE ",
            $models,
            " AND tenant_id = $2
             UNION ALL
             SELECT fm.model_id, f.tenant_id, f.algorithm, f.job_id, f.n_features, f.n_classes,
                    f.params, coalesce(fm.metrics, '{}'), f.artifact_uri, f.created_at, NULL,
                    f.id, fm.group_key, fm.slot
               FROM fleet_members fm JOIN models f ON f.id = fm.fleet_id
              WHERE ",
            $members,
            " AND f.tenant_id = $2"
        )
    };
}

/// The model if it belongs to `tenant`: another tenant's model does not exist for this one.
/// A fleet member's id gives the member (see [`ModelRecord::fleet_id`]).
pub async fn model_get_for(
    pool: &PgPool,
    tenant: &str,
    id: ModelId,
) -> Result<Option<ModelRecord>, DbError> {
    sqlx::query_as(models_and_members!("id = $1", "fm.model_id = $1"))
        .bind(id.0)
        .bind(tenant)
        .fetch_optional(pool)
        .await
}

/// The tenant's models among `ids` (fleet members included), in one statement; the others do
/// not exist for this tenant.
pub async fn models_get_for(
    pool: &PgPool,
    tenant: &str,
    ids: &[ModelId],
) -> Result<Vec<ModelRecord>, DbError> {
    let ids: Vec<uuid::Uuid> = ids.iter().map(|id| id.0).collect();
    sqlx::query_as(models_and_members!("id = ANY($1)", "fm.model_id = ANY($1)"))
        .bind(ids)
        .bind(tenant)
        .fetch_all(pool)
        .await
}

/// The model of group `group` of the tenant's fleet `fleet`, if that group trained.
pub async fn model_get_member(
    pool: &PgPool,
    tenant: &str,
    fleet: ModelId,
    group: &str,
) -> Result<Option<ModelRecord>, DbError> {
    sqlx::query_as(
        "SELECT fm.model_id AS id, f.tenant_id, f.algorithm, f.job_id, f.n_features, f.n_classes,
                f.params, coalesce(fm.metrics, '{}') AS metrics, f.artifact_uri, f.created_at,
                NULL::int4 AS groups, f.id AS fleet_id, fm.group_key, fm.slot
           FROM fleet_members fm JOIN models f ON f.id = fm.fleet_id
          WHERE fm.fleet_id = $1 AND fm.group_key = $2 AND f.tenant_id = $3
            AND fm.model_id IS NOT NULL",
    )
    .bind(fleet.0)
    .bind(group)
    .bind(tenant)
    .fetch_optional(pool)
    .await
}

/// The tenant's fleets, newest first, after the `after` cursor.
pub async fn fleet_list(
    pool: &PgPool,
    tenant: &str,
    after: Option<ModelId>,
    limit: i64,
) -> Result<Vec<ModelRecord>, DbError> {
    sqlx::query_as(concat!(
        "SELECT ",
        model_columns!(),
        " FROM models WHERE tenant_id = $1 AND groups IS NOT NULL
            AND ($2::uuid IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3"
    ))
    .bind(tenant)
    .bind(after.map(|a| a.0))
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// One group of a fleet: the model it trained, or why it failed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FleetMember {
    pub group_key: String,
    pub model_id: Option<ModelId>,
    pub slot: Option<i32>,
    pub metrics: Option<Value>,
    /// `{code, message}` of a group that failed.
    pub error: Option<Value>,
}

/// A group of the tenant's fleet, by its value.
pub async fn fleet_member_get(
    pool: &PgPool,
    tenant: &str,
    fleet: ModelId,
    group: &str,
) -> Result<Option<FleetMember>, DbError> {
    sqlx::query_as(
        "SELECT fm.group_key, fm.model_id, fm.slot, fm.metrics, fm.error
           FROM fleet_members fm JOIN models f ON f.id = fm.fleet_id
          WHERE fm.fleet_id = $1 AND fm.group_key = $2 AND f.tenant_id = $3",
    )
    .bind(fleet.0)
    .bind(group)
    .bind(tenant)
    .fetch_optional(pool)
    .await
}

/// A fleet's groups in order of their value, after `after`, at most `limit` of them.
pub async fn fleet_members_list(
    pool: &PgPool,
    fleet: ModelId,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<FleetMember>, DbError> {
    sqlx::query_as(
        "SELECT group_key, model_id, slot, metrics, error FROM fleet_members
          WHERE fleet_id = $1 AND ($2::text IS NULL OR group_key > $2)
          ORDER BY group_key LIMIT $3",
    )
    .bind(fleet.0)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The groups of a fleet that failed, by value, at most `limit` of them.
pub async fn fleet_failed_groups(
    pool: &PgPool,
    fleet: ModelId,
    limit: i64,
) -> Result<Vec<FleetMember>, DbError> {
    sqlx::query_as(
        "SELECT group_key, model_id, slot, metrics, error FROM fleet_members
          WHERE fleet_id = $1 AND error IS NOT NULL ORDER BY group_key LIMIT $2",
    )
    .bind(fleet.0)
    .bind(limit)
    .fetch_all(pool)
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
