//! The AMQP consumer: manual acks, a fresh connection, channel and topology whenever the broker
//! goes away, and two paths for what arrives.
//!
//! - A message of small inline inference jobs (`JobMessage::Batch`, up to
//!   [`queue::JOBS_PER_MESSAGE`] recorded together, from [`queue::batch_queue`]) is gathered
//!   with whatever else is already here, up to the prefetch, and run one forward pass per model
//!   ([`WorkerContext::run_batch`]). No timer: a batch is what arrived while the previous ones
//!   ran, so a lone job goes at once and a burst shares its round trips. A first delivery runs
//!   unclaimed and is acked once its outcomes are written; a redelivery is claimed first and
//!   acked then (`job/batch.rs` says why).
//! - Any other job (`JobMessage::Alone`, from the job queue itself, taken no faster than the
//!   worker has slots) waits for one of the worker's `concurrency` slots, in arrival order, then
//!   is claimed and run alone; its message is acked as soon as the claim is decided: from then
//!   on the job's lease in Postgres (not the delivery) keeps it safe, so long jobs never meet
//!   RabbitMQ's consumer timeout.
//!
//! Every job in hand holds one of `prefetch` permits until it is done (a message holds one per
//! job it announces, at most `prefetch`), which bounds the work in hand and lets shutdown wait for
//! all of it.

use crate::job::WorkerContext;
use crate::job::batch::Hold;
use futures_util::{FutureExt, Stream, StreamExt};
use gpuq_shared::JobId;
use gpuq_shared::queue::{self, JobMessage};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
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

/// A delivery, what it says (`None`: not a job message) and the permits it holds.
struct Arrived {
    delivery: Delivery,
    message: Option<JobMessage>,
    permits: OwnedSemaphorePermit,
}

/// A batch message in hand.
struct Held {
    delivery: Delivery,
    jobs: Vec<JobId>,
    _permits: OwnedSemaphorePermit,
}

impl Arrived {
    fn new(delivery: Delivery, permit: OwnedSemaphorePermit) -> Self {
        let message = serde_json::from_slice::<JobMessage>(&delivery.data).ok();
        Self {
            delivery,
            message,
            permits: permit,
        }
    }

    /// The permits it still needs beyond the one it holds: one per job, at most the prefetch.
    fn wanting(&self, prefetch: usize) -> u32 {
        let jobs = self.message.as_ref().map_or(1, |m| m.jobs().len());
        (jobs.clamp(1, prefetch.max(1)) - 1) as u32
    }
}

async fn consume(
    ctx: &Arc<WorkerContext>,
    capacity: Capacity,
    in_hand: &Arc<Semaphore>,
    alone: &Arc<Semaphore>,
    batches: &Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> Result<(), queue::QueueError> {
    let conn = queue::connect(ctx.settings.amqp_url.expose()).await?;
    let queue_name = &ctx.settings.queue;
    queue::declare(&conn.create_channel().await?, queue_name).await?;
    // One channel per queue, each with its own prefetch: the job queue's is the worker's slots
    // (a message waits unacked only while a slot frees up, as few as the reaper can tolerate),
    // the batch queue's is the prefetch.
    let alone_deliveries =
        consumer_on(&conn, queue_name, &ctx.worker_id, capacity.concurrency).await?;
    let batch_deliveries = consumer_on(
        &conn,
        &queue::batch_queue(queue_name),
        &format!("{}.batch", ctx.worker_id),
        capacity.prefetch,
    )
    .await?;
    // Either consumer ending (its channel closed) ends this connection's round: `Some(None)`.
    let ended = || futures_util::stream::iter([None]);
    let mut deliveries = futures_util::stream::select(
        alone_deliveries.map(Some).chain(ended()),
        batch_deliveries.map(Some).chain(ended()),
    );
    tracing::info!(queue = %ctx.settings.queue, ?capacity, "consuming");
    // Jobs to run alone wait for a slot in the order they arrived.
    let (to_alone, mut for_alone) =
        mpsc::unbounded_channel::<(JobId, Delivery, OwnedSemaphorePermit)>();
    {
        let (ctx, alone) = (ctx.clone(), alone.clone());
        tokio::spawn(async move {
            while let Some((id, delivery, permit)) = for_alone.recv().await {
                let slot = alone
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("semaphore never closed");
                tokio::spawn(run_alone(ctx.clone(), slot, id, delivery, permit));
            }
        });
    }
    let taking = Taking {
        to_alone,
        in_hand,
        prefetch: capacity.prefetch,
    };
    // A delivery that arrived while its permits were not free starts the next round.
    let mut waiting: Option<Arrived> = None;
    loop {
        let mut first = match waiting.take() {
            Some(arrived) => arrived,
            None => {
                let permit = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    p = in_hand.clone().acquire_owned() => p.expect("semaphore never closed"),
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    d = deliveries.next() => match d {
                        Some(Some(d)) => Arrived::new(d?, permit),
                        Some(None) | None => return Err(queue::QueueError::Closed),
                    },
                }
            }
        };
        // Nothing else of this round holds permits yet, so waiting for them cannot deadlock.
        let wanting = first.wanting(capacity.prefetch);
        if wanting > 0 {
            let more = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                p = in_hand.clone().acquire_many_owned(wanting) => p.expect("semaphore never closed"),
            };
            first.permits.merge(more);
        }
        let mut batch = Vec::new();
        taking.route(first, &mut batch);
        // Whatever else has arrived joins this round: no waiting for more.
        let mut closed = taking.take_arrived(&mut deliveries, &mut batch, &mut waiting)?;
        if !batch.is_empty() {
            // With every batch slot busy, what arrives meanwhile joins this batch.
            let slot = if closed {
                None
            } else {
                tokio::select! {
                    _ = shutdown.cancelled() => None,
                    s = batches.clone().acquire_owned() => Some(s.expect("semaphore never closed")),
                }
            };
            if slot.is_some() && waiting.is_none() {
                closed = taking.take_arrived(&mut deliveries, &mut batch, &mut waiting)?;
            }
            tokio::spawn(run_batch(ctx.clone(), batch, slot));
        }
        if closed {
            return Err(queue::QueueError::Closed);
        }
    }
}

/// A consumer of `queue` on a channel of its own with `prefetch` unacked messages at most.
async fn consumer_on(
    conn: &lapin::Connection,
    queue: &str,
    tag: &str,
    prefetch: usize,
) -> Result<lapin::Consumer, queue::QueueError> {
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(prefetch as u16, BasicQosOptions::default())
        .await?;
    Ok(channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?)
}

/// What routing deliveries needs.
struct Taking<'a> {
    to_alone: mpsc::UnboundedSender<(JobId, Delivery, OwnedSemaphorePermit)>,
    in_hand: &'a Arc<Semaphore>,
    prefetch: usize,
}

/// Both queues' deliveries; `None` once either consumer has closed.
type Deliveries = dyn Stream<Item = Option<Result<Delivery, lapin::Error>>> + Unpin + Send;

impl Taking<'_> {
    /// Routes every delivery that has already arrived, while permits last; one whose permits
    /// are not all free goes to `waiting` and ends the round. `true` once the consumer has
    /// closed.
    fn take_arrived(
        &self,
        deliveries: &mut Deliveries,
        batch: &mut Vec<Held>,
        waiting: &mut Option<Arrived>,
    ) -> Result<bool, queue::QueueError> {
        while let Ok(permit) = self.in_hand.clone().try_acquire_owned() {
            let mut arrived = match deliveries.next().now_or_never() {
                Some(Some(Some(d))) => Arrived::new(d?, permit),
                Some(Some(None) | None) => return Ok(true),
                None => break,
            };
            let wanting = arrived.wanting(self.prefetch);
            if wanting > 0 {
                match self.in_hand.clone().try_acquire_many_owned(wanting) {
                    Ok(more) => arrived.permits.merge(more),
                    Err(_) => {
                        *waiting = Some(arrived);
                        break;
                    }
                }
            }
            self.route(arrived, batch);
        }
        Ok(false)
    }

    /// Sends a batch message to `batch`, and any other job off to run alone.
    fn route(&self, arrived: Arrived, batch: &mut Vec<Held>) {
        let Arrived {
            delivery,
            message,
            permits,
        } = arrived;
        match message {
            None => {
                tracing::warn!("dropping a message that is not a job message");
                tokio::spawn(async move {
                    let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                });
            }
            Some(JobMessage::Alone(id)) => {
                // The receiver lives as long as this round's consumer.
                let _ = self.to_alone.send((id, delivery, permits));
            }
            Some(JobMessage::Batch(jobs)) => batch.push(Held {
                delivery,
                jobs,
                _permits: permits,
            }),
        }
    }
}

/// Runs a batch, holding one of the batch slots (none when the worker is stopping): first
/// deliveries unclaimed, redeliveries claimed.
async fn run_batch(ctx: Arc<WorkerContext>, batch: Vec<Held>, _slot: Option<OwnedSemaphorePermit>) {
    let (again, fresh): (Vec<Held>, Vec<Held>) =
        batch.into_iter().partition(|h| h.delivery.redelivered);
    tokio::join!(run_unclaimed(&ctx, fresh), run_claimed(&ctx, again));
}

/// Reads the jobs (still `queued`), runs them, and acks once every outcome is written. If that
/// fails, the messages go back to the queue and come again as redeliveries.
async fn run_unclaimed(ctx: &Arc<WorkerContext>, held: Vec<Held>) {
    let Some((ids, _running)) = take_on(ctx, &held).await else {
        return;
    };
    let started_at = chrono::Utc::now();
    let recorded = match gpuq_shared::db::jobs_get_runnable(&ctx.pool, &ids).await {
        Ok(jobs) if jobs.is_empty() => true,
        Ok(jobs) => ctx.run_batch(jobs, Hold::Unclaimed { started_at }).await,
        Err(e) => {
            tracing::warn!(jobs = ids.len(), error = %e, "reading a batch failed");
            false
        }
    };
    if recorded {
        ack_all(&held).await;
    } else {
        tracing::warn!(
            jobs = ids.len(),
            "requeueing a batch whose outcomes are not all written"
        );
        requeue_all(&held).await;
    }
}

/// Claims the batch in one statement, acks every message, and runs what it claimed.
async fn run_claimed(ctx: &Arc<WorkerContext>, held: Vec<Held>) {
    let Some((ids, _running)) = take_on(ctx, &held).await else {
        return;
    };
    let lease = ctx.settings.lifecycle.lease;
    match gpuq_shared::db::jobs_set_running(&ctx.pool, &ids, &ctx.worker_id, lease).await {
        Ok(jobs) => {
            ack_all(&held).await;
            if !jobs.is_empty() {
                ctx.run_batch(jobs, Hold::Claimed).await;
            }
        }
        Err(e) => {
            tracing::warn!(jobs = ids.len(), error = %e, "batch claim failed; requeueing the messages");
            requeue_all(&held).await;
        }
    }
}

/// The jobs of `held` (`None` if there are none), counted as running (and, on ECS, protected
/// from scale-in) for as long as the caller keeps the counts.
async fn take_on(ctx: &Arc<WorkerContext>, held: &[Held]) -> Option<(Vec<JobId>, Vec<Running>)> {
    if held.is_empty() {
        return None;
    }
    let ids: Vec<JobId> = held.iter().flat_map(|h| h.jobs.iter().copied()).collect();
    let running = ids.iter().map(|_| Running::count(ctx)).collect();
    ctx.presence.protect().await;
    Some((ids, running))
}

async fn ack_all(held: &[Held]) {
    for h in held {
        let _ = h.delivery.acker.ack(BasicAckOptions::default()).await;
    }
}

/// Hands the messages back after a pause, so a failing database is not hammered.
async fn requeue_all(held: &[Held]) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    for h in held {
        let _ = h.delivery.acker.nack(requeue()).await;
    }
}

/// Claims the job (its slot already taken, in arrival order), acks its message and runs it.
async fn run_alone(
    ctx: Arc<WorkerContext>,
    _slot: OwnedSemaphorePermit,
    job_id: JobId,
    delivery: Delivery,
    _permit: OwnedSemaphorePermit,
) {
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
