//! The reaper: what makes a crash anywhere lose nothing, without flooding a deep queue. It hands
//! jobs whose worker stopped renewing its lease back to the queue, publishes `queued` jobs whose
//! message never went out (or whose retry backoff is over), and publishes again those whose
//! message was lost. Duplicate messages are harmless (the claim is conditional) but each costs
//! a delivery, so the reaper only adds one where a message is missing.
//!
//! # When is a message lost?
//!
//! A job's `published_at` says when its message was confirmed by the broker (set by the API
//! after the confirm, and by the reaper when it publishes). Age alone does not mean loss: with
//! the workers busy or stopped, a message legitimately waits in a deep queue for hours, and
//! republishing every job older than `republish_after` adds one more message per queued job
//! every `republish_after` — the backlog grows duplicates without bound.
//!
//! So the reaper counts instead. Every job marked published and still `queued` should have a
//! message in the queues (the job queue, or the batch queue for a shared message, whose jobs
//! carry its id in `message_id` and count once); if the queues hold at least as many ready
//! messages as that, nothing is missing and nothing is published again. When they hold `d`
//! fewer, `d` messages are missing (a broker that lost messages, a purged or deleted queue): the
//! reaper publishes again the jobs of the `d` messages published longest ago (and more than
//! `republish_after` ago, so a message being confirmed right now is never taken for lost), each
//! job in a message of its own. In a FIFO queue the message published longest ago is the
//! likeliest one gone; should it be a live one after all, the count is level again and the
//! duplicate is drained (acked and dropped) when it is delivered, after which the count shows the
//! real gap once more and the next-oldest messages get their turn.
//!
//! The count is read from the broker first and from Postgres second, so a message published
//! between the two reads counts for the broker only (no false gap). Its limits, which err
//! towards duplicates, never towards loss: messages a worker has been delivered but not yet
//! acked (on the job queue at most its concurrency, `GPUQ_WORKER_CONCURRENCY`; on the batch
//! queue, run at once, only for milliseconds) are not counted as ready, so with busy workers up
//! to the pool's total concurrency may be published twice; messages of jobs no longer `queued`
//! (stale duplicates) count as ready and hide as many lost ones until the workers drain them.
//! With the workers stopped, the queues hold exactly one message per job or shared message.

use crate::config::Lifecycle;
use crate::db;
use crate::domain::JobId;
use crate::queue::{JobMessage, Publisher};
use sqlx::PgPool;
use std::time::Duration;

/// How long a recorded job may stay unmarked before the reaper publishes it: the API normally
/// confirms and marks within milliseconds (capped by `republish_after` for short test settings).
const PUBLISH_GRACE: Duration = Duration::from_secs(10);

/// Jobs published per batch (and each sweep publishes at most a few batches).
const BATCH: i64 = 1000;
const BATCHES_PER_SWEEP: usize = 20;

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Running jobs whose lease expired, sent back to `queued` (or `failed`).
    pub requeued: u64,
    /// Jobs published for the first time (or after their backoff).
    pub published: usize,
    /// Jobs published again because the broker lost their message.
    pub republished: usize,
}

/// One pass.
pub async fn sweep(
    pool: &PgPool,
    publisher: &Publisher,
    lifecycle: &Lifecycle,
) -> anyhow::Result<Swept> {
    let mut swept = Swept {
        requeued: db::jobs_requeue_expired(pool, lifecycle.backoff).await?,
        ..Swept::default()
    };
    if swept.requeued > 0 {
        tracing::info!(count = swept.requeued, "requeued jobs whose lease expired");
    }
    let grace = PUBLISH_GRACE.min(lifecycle.republish_after);
    for _ in 0..BATCHES_PER_SWEEP {
        let ids = db::jobs_due_for_publish(pool, grace, BATCH).await?;
        publish(pool, publisher, &ids).await?;
        swept.published += ids.len();
        if (ids.len() as i64) < BATCH {
            break;
        }
    }
    if swept.published > 0 {
        tracing::info!(
            count = swept.published,
            "published queued jobs whose message never went out"
        );
    }
    // The broker first, Postgres second: see the module's doc.
    let ready = u64::from(publisher.ready_messages().await?);
    let believed = db::jobs_count_published(pool).await?;
    let missing = believed.saturating_sub(ready);
    if missing > 0 {
        let ids = db::jobs_republish_stale(
            pool,
            lifecycle.republish_after,
            (missing as i64).min(BATCH * BATCHES_PER_SWEEP as i64),
        )
        .await?;
        for chunk in ids.chunks(BATCH as usize) {
            publish(pool, publisher, chunk).await?;
        }
        swept.republished = ids.len();
        if !ids.is_empty() {
            tracing::warn!(
                missing,
                ready,
                believed,
                count = ids.len(),
                "the queue holds fewer messages than queued jobs: published the oldest again"
            );
        }
    }
    Ok(swept)
}

/// Publishes jobs already marked published; if the broker fails, unmarks them so the next sweep
/// publishes them again.
async fn publish(pool: &PgPool, publisher: &Publisher, ids: &[JobId]) -> anyhow::Result<()> {
    if let Err(e) = publisher
        .publish_batch(
            &ids.iter()
                .map(|&id| JobMessage::Alone(id))
                .collect::<Vec<_>>(),
        )
        .await
    {
        db::jobs_set_unpublished(pool, ids).await?;
        return Err(e.into());
    }
    Ok(())
}
