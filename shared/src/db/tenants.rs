//! The `tenants` and `api_keys` tables: who owns jobs and models, and the keys they call with.

use super::DbError;
use sqlx::postgres::PgPool;

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

/// Every tenant's id (the orphan sweep walks each one's prefix).
pub async fn tenant_ids(pool: &PgPool) -> Result<Vec<String>, DbError> {
    sqlx::query_scalar("SELECT id FROM tenants ORDER BY id")
        .fetch_all(pool)
        .await
}
