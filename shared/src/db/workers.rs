//! The `workers` table: the pool as the workers report it.

use super::DbError;
use serde_json::Value;
use sqlx::postgres::PgPool;
use std::time::Duration;

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
