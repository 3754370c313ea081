//! The orphan sweep: deletes the outputs and model files that nothing will ever read. A losing
//! attempt deletes what it wrote itself; what is left is the work of a worker that died (or was
//! cut off) between its PUT and its record. The sweep lists each tenant's `models/` and
//! `outputs/` ([`crate::objects`]), and deletes an object older than the grace period when no job
//! result or model row records it and the attempt that wrote it no longer holds its job. Keys gpuq
//! never writes are left alone. Run by the maintenance loop ([`crate::reaper`]).

use crate::config::Settings;
use crate::db::{self, DbError};
use crate::domain::S3Uri;
use crate::error::JobError;
use crate::objects::{WRITTEN_FOLDERS, written_by};
use crate::storage::Storage;
use sqlx::PgPool;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("database: {0}")]
    Db(#[from] DbError),
    #[error("storage: {0}")]
    Storage(#[from] JobError),
}

/// What one sweep found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    /// Objects of gpuq's layout older than the grace period.
    pub examined: usize,
    /// Those nothing wanted, deleted.
    pub deleted: Vec<S3Uri>,
}

/// Deletes every orphan older than `older_than`; see the module's doc.
pub async fn sweep(
    pool: &PgPool,
    storage: &Storage,
    settings: &Settings,
    older_than: Duration,
) -> Result<Swept, SweepError> {
    let (examined, orphans) = scan(pool, storage, settings, older_than).await?;
    let mut deleted = Vec::with_capacity(orphans.len());
    for uri in orphans {
        match storage.delete(&uri).await {
            Ok(()) => deleted.push(uri),
            // Still an orphan next time.
            Err(e) => tracing::warn!(%uri, error = %e, "could not delete an orphaned object"),
        }
    }
    if !deleted.is_empty() {
        tracing::info!(count = deleted.len(), examined, "deleted orphaned objects");
    }
    Ok(Swept { examined, deleted })
}

/// The orphans older than `older_than`, without deleting them (the soak's audit counts them).
pub async fn find(
    pool: &PgPool,
    storage: &Storage,
    settings: &Settings,
    older_than: Duration,
) -> Result<Vec<S3Uri>, SweepError> {
    Ok(scan(pool, storage, settings, older_than).await?.1)
}

/// How many objects of gpuq's layout are older than `older_than`, and which of them are orphans.
async fn scan(
    pool: &PgPool,
    storage: &Storage,
    settings: &Settings,
    older_than: Duration,
) -> Result<(usize, Vec<S3Uri>), SweepError> {
    let cutoff = chrono::Utc::now()
        - chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
    let (mut examined, mut orphans) = (0, Vec::new());
    for tenant in db::tenant_ids(pool).await? {
        let tenant_prefix = settings.tenant_prefix(&tenant);
        for folder in WRITTEN_FOLDERS {
            let prefix = format!("{tenant_prefix}{folder}");
            let mut token = None;
            loop {
                let (page, next) = storage.list_page(&settings.bucket, &prefix, token).await?;
                let written: Vec<_> = page
                    .iter()
                    .filter(|o| o.last_modified < cutoff)
                    .filter_map(|o| {
                        let below = o.uri.key.strip_prefix(&tenant_prefix)?;
                        Some((o.uri.clone(), written_by(&o.uri, below)?))
                    })
                    .collect();
                if !written.is_empty() {
                    examined += written.len();
                    let objects: Vec<_> = written.iter().map(|(_, w)| w.clone()).collect();
                    let wanted = db::objects_wanted(pool, &objects).await?;
                    orphans.extend(
                        written
                            .into_iter()
                            .filter(|(_, w)| !wanted.contains(&w.uri))
                            .map(|(uri, _)| uri),
                    );
                }
                match next {
                    Some(t) => token = Some(t),
                    None => break,
                }
            }
        }
    }
    Ok((examined, orphans))
}
