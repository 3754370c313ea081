//! The AMQP consumer: manual acks, a fresh connection, channel and topology whenever the broker
//! goes away, and two paths for what arrives.
//!
//! - A message hinted `batch` (small inline inference) is gathered with whatever else is
//!   already here, up to the prefetch: they are claimed in one `UPDATE`, acked, and run one
//!   forward pass per model ([`WorkerContext::run_batch`]). No timer: a batch is what arrived
//!   while the previous ones ran, so a lone job goes at once and a burst shares its round trips.
//! - Any other job waits for one of the worker's `concurrency` slots, then is claimed and run
//!   alone.
//!
//! A message is acked as soon as its claim is decided: from then on the job's lease in Postgres
//! (not the delivery) keeps it safe, so long jobs never meet RabbitMQ's consumer timeout. Every
//! delivery holds one of `prefetch` permits until its job is done, which bounds the work in hand
//! and lets shutdown wait for all of it.

use crate::job::WorkerContext;
use futures_util::{FutureExt, StreamExt};
use gpuq_shared::JobId;
use gpuq_shared::queue::{self, JobMessage};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Batches claimed and run at once. While they run, what arrives waits in the consumer's
/// buffer (up to the prefetch) and becomes the next batch whole: under load batches grow, and
/// the statements per job shrink, instead of many small batches racing each other.
const BATCHES_IN_FLIGHT: usize = 2;

/// How much a worker takes on at once.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    /// Jobs run alone at once (training, S3 inputs, large inputs).
    pub concurrency: usize,
    /// Messages in hand at once (the AMQP prefetch), and so the largest batch.
    pub prefetch: usize,
}

/// Consumes until `shutdown`, then waits up to `drain` for the jobs in hand.
pub async fn run(
    ctx: Arc<WorkerContext>,
    capacity: Capacity,
    drain: Duration,
    shutdown: CancellationToken,
) {
    let in_hand = Arc::new(Semaphore::new(capacity.prefetch));
    let alone = Arc::new(Semaphore::new(capacity.concurrency));
    let batches = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    let mut backoff = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        match consume(&ctx, capacity, &in_hand, &alone, &batches, &shutdown).await {
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
    let all = capacity.prefetch as u32;
    if tokio::time::timeout(drain, in_hand.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("drain deadline passed: handing the jobs in hand back to the queue");
        ctx.abort.cancel();
        // Each stops at its next check and records the hand-back; one that cannot is left to
        // the reaper once its lease lapses.
        if tokio::time::timeout(Duration::from_secs(15), in_hand.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!("some jobs did not stop; the reaper will requeue them");
        }
    }
}

/// A delivery and the permit it holds.
type InHand = (Delivery, OwnedSemaphorePermit);

async fn consume(
    ctx: &Arc<WorkerContext>,
    capacity: Capacity,
    in_hand: &Arc<Semaphore>,
    alone: &Arc<Semaphore>,
    batches: &Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> Result<(), queue::QueueError> {
    let conn = queue::connect(ctx.settings.amqp_url.expose()).await?;
    let channel = conn.create_channel().await?;
    queue::declare(&channel, &ctx.settings.queue).await?;
    channel
        .basic_qos(capacity.prefetch as u16, BasicQosOptions::default())
        .await?;
    let mut deliveries = channel
        .basic_consume(
            ctx.settings.queue.as_str().into(),
            ctx.worker_id.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue = %ctx.settings.queue, ?capacity, "consuming");
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            p = in_hand.clone().acquire_owned() => p.expect("semaphore never closed"),
        };
        let first = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            d = deliveries.next() => match d {
                Some(d) => d?,
                None => return Err(queue::QueueError::Closed),
            },
        };
        let mut batch = Vec::new();
        route(ctx, alone, (first, permit), &mut batch);
        // Whatever else has arrived joins this round: no waiting for more.
        let mut closed = take_arrived(ctx, alone, in_hand, &mut deliveries, &mut batch)?;
        if !batch.is_empty() && !closed {
            // With every batch slot busy, what arrives meanwhile joins this batch.
            let slot = tokio::select! {
                _ = shutdown.cancelled() => None,
                s = batches.clone().acquire_owned() => Some(s.expect("semaphore never closed")),
            };
            closed = take_arrived(ctx, alone, in_hand, &mut deliveries, &mut batch)?;
            tokio::spawn(run_batch(ctx.clone(), batch, slot));
        } else if !batch.is_empty() {
            tokio::spawn(run_batch(ctx.clone(), batch, None));
        }
        if closed {
            return Err(queue::QueueError::Closed);
        }
    }
}

/// Routes every delivery that has already arrived (while permits last); `true` once the
/// consumer has closed.
fn take_arrived(
    ctx: &Arc<WorkerContext>,
    alone: &Arc<Semaphore>,
    in_hand: &Arc<Semaphore>,
    deliveries: &mut lapin::Consumer,
    batch: &mut Vec<(JobId, InHand)>,
) -> Result<bool, queue::QueueError> {
    while let Ok(permit) = in_hand.clone().try_acquire_owned() {
        match deliveries.next().now_or_never() {
            Some(Some(d)) => route(ctx, alone, (d?, permit), batch),
            Some(None) => return Ok(true),
            None => break,
        }
    }
    Ok(false)
}

/// Sends a batchable delivery to `batch`, and any other off to run alone.
fn route(
    ctx: &Arc<WorkerContext>,
    alone: &Arc<Semaphore>,
    (delivery, permit): InHand,
    batch: &mut Vec<(JobId, InHand)>,
) {
    let Ok(message) = serde_json::from_slice::<JobMessage>(&delivery.data) else {
        tracing::warn!("dropping a message that is not a job message");
        tokio::spawn(async move {
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        });
        return;
    };
    if message.batch {
        batch.push((message.job_id, (delivery, permit)));
    } else {
        tokio::spawn(run_alone(
            ctx.clone(),
            alone.clone(),
            message.job_id,
            (delivery, permit),
        ));
    }
}

/// Claims the batch in one statement, acks every message, and runs what it claimed, holding
/// one of the batch slots (none when the worker is stopping).
async fn run_batch(
    ctx: Arc<WorkerContext>,
    batch: Vec<(JobId, InHand)>,
    _slot: Option<OwnedSemaphorePermit>,
) {
    let ids: Vec<JobId> = batch.iter().map(|(id, _)| *id).collect();
    let _running: Vec<Running> = ids.iter().map(|_| Running::count(&ctx)).collect();
    ctx.presence.protect().await;
    let lease = ctx.settings.lifecycle.lease;
    let claimed = gpuq_shared::db::jobs_set_running(&ctx.pool, &ids, &ctx.worker_id, lease).await;
    let (deliveries, _permits): (Vec<Delivery>, Vec<OwnedSemaphorePermit>) =
        batch.into_iter().map(|(_, held)| held).unzip();
    match claimed {
        Ok(jobs) => {
            for d in &deliveries {
                let _ = d.acker.ack(BasicAckOptions::default()).await;
            }
            if !jobs.is_empty() {
                ctx.run_batch(jobs).await;
            }
        }
        Err(e) => {
            tracing::warn!(jobs = ids.len(), error = %e, "batch claim failed; requeueing the messages");
            tokio::time::sleep(Duration::from_millis(500)).await;
            for d in &deliveries {
                let _ = d.acker.nack(requeue()).await;
            }
        }
    }
}

/// Waits for a slot, claims the job, acks its message and runs it.
async fn run_alone(
    ctx: Arc<WorkerContext>,
    alone: Arc<Semaphore>,
    job_id: JobId,
    (delivery, _permit): InHand,
) {
    let _slot = alone.acquire_owned().await.expect("semaphore never closed");
    // Counted (and, on ECS, protected from scale-in) before the claim, so the task is never
    // without protection while it holds a job.
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
            let _ = delivery.acker.nack(requeue()).await;
        }
    }
}

fn requeue() -> BasicNackOptions {
    BasicNackOptions {
        requeue: true,
        ..Default::default()
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
