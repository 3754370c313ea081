//! The AMQP consumer: manual acks, prefetch bounded by the worker's concurrency, and a fresh
//! connection, channel and topology whenever the broker goes away.
//!
//! A message is acked as soon as its claim is decided: from then on the job's lease in Postgres
//! (not the delivery) keeps it safe, so long jobs never meet RabbitMQ's consumer timeout.

use crate::job::WorkerContext;
use futures_util::StreamExt;
use gpuq_shared::queue::{self, JobMessage};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Consumes until `shutdown`, then waits up to `drain` for the jobs in hand.
pub async fn run(
    ctx: Arc<WorkerContext>,
    concurrency: usize,
    drain: Duration,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut backoff = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        match consume(&ctx, concurrency, &slots, &shutdown).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "lost the broker; reconnecting");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    let all = concurrency as u32;
    if tokio::time::timeout(drain, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("drain deadline passed: handing the jobs in hand back to the queue");
        ctx.abort.cancel();
        // Each stops at its next check and records the hand-back; one that cannot is left to
        // the reaper once its lease lapses.
        if tokio::time::timeout(Duration::from_secs(15), slots.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!("some jobs did not stop; the reaper will requeue them");
        }
    }
}

async fn consume(
    ctx: &Arc<WorkerContext>,
    concurrency: usize,
    slots: &Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> Result<(), queue::QueueError> {
    let conn = queue::connect(ctx.settings.amqp_url.expose()).await?;
    let channel = conn.create_channel().await?;
    queue::declare(&channel, &ctx.settings.queue).await?;
    channel
        .basic_qos(concurrency as u16, BasicQosOptions::default())
        .await?;
    let mut deliveries = channel
        .basic_consume(
            ctx.settings.queue.as_str().into(),
            ctx.worker_id.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue = %ctx.settings.queue, concurrency, "consuming");
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            s = slots.clone().acquire_owned() => s.expect("semaphore never closed"),
        };
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            d = deliveries.next() => match d {
                Some(d) => d?,
                None => return Err(queue::QueueError::Closed),
            },
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let Ok(JobMessage { job_id }) = serde_json::from_slice(&delivery.data) else {
                tracing::warn!("dropping a message that is not a job message");
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                return;
            };
            // Counted (and, on ECS, protected from scale-in) before the claim, so the task
            // is never without protection while it holds a job.
            let _running = Running::count(&ctx);
            ctx.presence.protect().await;
            match claim(&ctx, job_id).await {
                Ok(Some(run)) => {
                    let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                    run.await;
                }
                Ok(None) => {
                    let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                }
                Err(e) => {
                    tracing::warn!(job = %job_id, error = %e, "claim failed; requeueing the message");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let _ = delivery
                        .acker
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        })
                        .await;
                }
            }
        });
    }
}

/// Counts a job being claimed or run in `ctx.running` for as long as it lives (the pool's
/// presence and the ECS task protection follow that count).
struct Running(Arc<WorkerContext>);

impl Running {
    fn count(ctx: &Arc<WorkerContext>) -> Self {
        ctx.presence.running.fetch_add(1, Ordering::SeqCst);
        Self(ctx.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.presence.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Claims the job; on success returns the future that runs it.
async fn claim(
    ctx: &Arc<WorkerContext>,
    id: gpuq_shared::JobId,
) -> Result<Option<impl Future<Output = ()> + use<>>, gpuq_shared::db::DbError> {
    let lease = ctx.settings.lifecycle.lease;
    let Some(job) = gpuq_shared::db::job_set_running(&ctx.pool, id, &ctx.worker_id, lease).await?
    else {
        return Ok(None);
    };
    let ctx = ctx.clone();
    Ok(Some(async move { ctx.run(job).await }))
}
