//! The reaper: what makes a crash anywhere lose nothing. It hands jobs whose worker stopped
//! renewing its lease back to the queue, and publishes `queued` jobs whose retry backoff is over
//! or whose message never went out or was lost. Duplicate messages are harmless: the claim is conditional.
//! Less often it sweeps orphaned outputs and model files ([`orphans`]).

use crate::config::{Lifecycle, Settings};
use crate::db;
use crate::orphans;
use crate::queue::Publisher;
use crate::storage::Storage;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Runs until `shutdown` fires, one sweep every `lifecycle.reaper_interval`, and, given the
/// `storage` to sweep (the API has none: it calls no AWS API), an orphan sweep
/// ([`orphans::sweep`]) every `lifecycle.orphan_sweep_interval`.
pub async fn run(
    pool: PgPool,
    publisher: &Publisher,
    storage: Option<&Storage>,
    settings: &Settings,
    shutdown: CancellationToken,
) {
    let lifecycle = &settings.lifecycle;
    let mut tick = tokio::time::interval(lifecycle.reaper_interval);
    let mut orphans_due = tokio::time::Instant::now() + lifecycle.orphan_sweep_interval;
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = sweep(&pool, publisher, lifecycle).await {
            tracing::warn!(error = %e, "reaper sweep failed; will retry");
        }
        if let Some(storage) = storage
            && tokio::time::Instant::now() >= orphans_due
        {
            orphans_due = tokio::time::Instant::now() + lifecycle.orphan_sweep_interval;
            let grace = lifecycle.orphan_grace;
            if let Err(e) = orphans::sweep(&pool, storage, settings, grace).await {
                tracing::warn!(error = %e, "orphan sweep failed; will retry");
            }
        }
    }
}

/// One pass; returns how many jobs it published.
pub async fn sweep(
    pool: &PgPool,
    publisher: &Publisher,
    lifecycle: &Lifecycle,
) -> anyhow::Result<usize> {
    let expired = db::jobs_requeue_expired(pool, lifecycle.backoff).await?;
    if expired > 0 {
        tracing::info!(count = expired, "requeued jobs whose lease expired");
    }
    let ids = db::jobs_due_for_publish(pool, lifecycle.republish_after, 1000).await?;
    if !ids.is_empty() {
        tracing::info!(
            count = ids.len(),
            "publishing queued jobs: retries due, or no live message"
        );
    }
    for id in &ids {
        // A failure here leaves the job queued with `published_at` set: the next sweep after
        // `republish_after` tries again.
        publisher.publish(*id).await?;
    }
    Ok(ids.len())
}
