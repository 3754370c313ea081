//! What keeps an object gpuq wrote to S3: a job's result or a model row that records it, or an
//! attempt that still holds its job and may yet record it. Spans `jobs` and `models`; the orphan
//! sweep asks it about the objects it lists.

use super::DbError;
use crate::domain::{JobId, ModelId};
use sqlx::postgres::PgPool;
use std::collections::HashSet;
use uuid::Uuid;

/// An object and who wrote it, as its key names them (`crate::objects::ObjectKey`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenObject {
    /// `s3://bucket/key`, as a result or model row would record it.
    pub uri: String,
    pub job_id: Option<JobId>,
    /// `None` for keys written before keys were attempt-scoped.
    pub attempt: Option<i32>,
    pub model_id: Option<ModelId>,
}

/// Of `objects`, the uris still wanted: recorded as a job's `result.output_uri` or a model's
/// `artifact_uri`, or written by an attempt that still holds its job (`running` with that
/// attempt: it may yet record it). Any other is an orphan. Each object costs index lookups only.
pub async fn objects_wanted(
    pool: &PgPool,
    objects: &[WrittenObject],
) -> Result<HashSet<String>, DbError> {
    let uris: Vec<&str> = objects.iter().map(|o| o.uri.as_str()).collect();
    let jobs: Vec<Option<Uuid>> = objects.iter().map(|o| o.job_id.map(|j| j.0)).collect();
    let attempts: Vec<Option<i32>> = objects.iter().map(|o| o.attempt).collect();
    let models: Vec<Option<Uuid>> = objects.iter().map(|o| o.model_id.map(|m| m.0)).collect();
    let wanted: Vec<String> = sqlx::query_scalar(
        "SELECT o.uri
         FROM unnest($1::text[], $2::uuid[], $3::int4[], $4::uuid[])
              AS o(uri, job_id, attempt, model_id)
         WHERE EXISTS (SELECT 1 FROM jobs j
                       WHERE j.id = o.job_id
                         AND (j.result->>'output_uri' = o.uri
                              OR (j.status = 'running'
                                  AND (o.attempt IS NULL OR j.attempt = o.attempt))))
            OR EXISTS (SELECT 1 FROM models m
                       WHERE (m.job_id = o.job_id OR m.id = o.model_id)
                         AND m.artifact_uri = o.uri)",
    )
    .bind(uris)
    .bind(jobs)
    .bind(attempts)
    .bind(models)
    .fetch_all(pool)
    .await?;
    Ok(wanted.into_iter().collect())
}
