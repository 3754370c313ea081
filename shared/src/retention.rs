//! Deleting finished work and what it left in S3: one job on its tenant's request, or whatever
//! is older than the deployment keeps
//! ([`Retention`](crate::config::Retention)), swept by the maintenance loop. Objects go
//! first and the row last, so a failure part-way leaves the row to be deleted again rather than
//! objects nobody points to.

use crate::config::Settings;
use crate::db::{self, FinishedJob};
use crate::domain::{JobId, JobType, S3Uri};
use crate::error::JobError;
use crate::storage::Storage;
use serde_json::Value;
use sqlx::PgPool;

/// Jobs deleted per sweep, and S3 calls in flight while deleting their objects.
const BATCH: i64 = 500;
const S3_CONCURRENCY: usize = 16;

/// What one retention sweep deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Deleted {
    pub jobs: u64,
    pub idempotency_keys: u64,
}

/// Where a job's outputs go: `[prefix/]tenants/<tenant>/outputs/<job>/`. Every object under it
/// belongs to the job (the recorded output and any a losing attempt left).
pub fn job_outputs_prefix(settings: &Settings, tenant: &str, job: JobId) -> String {
    format!("{}outputs/{job}/", settings.tenant_prefix(tenant))
}

/// Deletes the objects a finished job left: its recorded `result.output_uri` (only inside its
/// tenant's prefix of the deployment's bucket, whatever the row says) and everything under its
/// outputs prefix. A train job's model artifact is the model's and stays.
pub async fn delete_job_outputs(
    storage: &Storage,
    settings: &Settings,
    job: &FinishedJob,
) -> Result<(), JobError> {
    let id = job.id;
    let own = settings.tenant_prefix(&job.tenant_id);
    let mut doomed: Vec<S3Uri> = job
        .result
        .as_ref()
        .and_then(|r| r.get("output_uri"))
        .and_then(Value::as_str)
        .and_then(|u| u.parse::<S3Uri>().ok())
        .filter(|u| u.bucket == settings.bucket && u.key.starts_with(&own))
        .into_iter()
        .collect();
    if job.job_type == JobType::Infer {
        let prefix = job_outputs_prefix(settings, &job.tenant_id, id);
        doomed.extend(storage.list(&settings.bucket, &prefix).await?);
    }
    doomed.sort_by(|a, b| a.key.cmp(&b.key));
    doomed.dedup();
    for chunk in doomed.chunks(S3_CONCURRENCY) {
        let deletes = chunk.iter().map(|uri| storage.delete(uri));
        for deleted in futures_util::future::join_all(deletes).await {
            deleted?;
        }
    }
    Ok(())
}

/// One pass: up to a batch of jobs finished longer ago than `settings.retention.jobs` (their
/// objects, then their rows) and of idempotency keys older than its `idempotency_keys`.
pub async fn sweep(
    pool: &PgPool,
    storage: &Storage,
    settings: &Settings,
) -> anyhow::Result<Deleted> {
    let retention = &settings.retention;
    let mut deleted = Deleted::default();
    if let Some(keep) = retention.jobs {
        let jobs = db::jobs_finished_before(pool, keep, BATCH).await?;
        let mut gone = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(S3_CONCURRENCY) {
            let deletes = chunk
                .iter()
                .map(|job| delete_job_outputs(storage, settings, job));
            for (job, outputs) in chunk
                .iter()
                .zip(futures_util::future::join_all(deletes).await)
            {
                match outputs {
                    Ok(()) => gone.push(job.id),
                    Err(e) => tracing::warn!(
                        job = %job.id, error = %e,
                        "could not delete a job's outputs; kept for the next sweep"
                    ),
                }
            }
        }
        deleted.jobs = db::jobs_delete_finished(pool, &gone).await?;
    }
    if let Some(keep) = retention.idempotency_keys {
        deleted.idempotency_keys = db::idempotency_keys_delete_before(pool, keep, BATCH).await?;
    }
    if deleted != Deleted::default() {
        tracing::info!(
            jobs = deleted.jobs,
            idempotency_keys = deleted.idempotency_keys,
            "retention: deleted what is past its time"
        );
    }
    Ok(deleted)
}
