//! The gpuq GPU worker: consumes job ids from RabbitMQ, runs them on one wgpu device, records
//! outcomes in Postgres and outputs in S3. Also runs a reaper, so jobs of a crashed peer move on.

pub mod algorithms;
pub mod artifact;
pub mod consumer;
pub mod gpu;
pub mod job;
pub mod leases;
pub mod presence;

use gpuq_shared::config::{Settings, non_empty_var, parse_var, var_or};
use gpuq_shared::queue::Publisher;
use gpuq_shared::storage::Storage;
use gpuq_shared::{db, reaper};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub shared: Settings,
    /// Jobs this worker runs at once (and its AMQP prefetch).
    pub concurrency: usize,
    /// On shutdown, how long to let jobs in hand finish before leaving them to the reaper.
    pub drain: Duration,
    /// The name it goes by in `jobs.worker_id` and `workers` (`GPUQ_WORKER_ID`, set by a
    /// supervisor such as the scaler); `None` makes one from the host name and pid.
    pub worker_id: Option<String>,
    /// `HOSTNAME`, recorded in `workers`.
    pub hostname: String,
    /// `ECS_AGENT_URI`: on ECS, the agent the task's scale-in protection is set through.
    pub ecs_agent_uri: Option<String>,
}

impl WorkerSettings {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            shared: Settings::from_env()?,
            concurrency: parse_var("GPUQ_WORKER_CONCURRENCY", 32usize)?.clamp(1, 256),
            drain: Duration::from_secs_f64(parse_var("GPUQ_DRAIN_SECONDS", 30.0)?),
            worker_id: non_empty_var("GPUQ_WORKER_ID"),
            hostname: var_or("HOSTNAME", ""),
            ecs_agent_uri: non_empty_var("ECS_AGENT_URI"),
        })
    }
}

/// Connects everything, then consumes until `shutdown`; jobs in hand get `settings.drain` to
/// finish.
pub async fn run(settings: WorkerSettings, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with_abort(settings, shutdown, CancellationToken::new()).await
}

/// As [`run`], with an `abort` that stops the GPU work of jobs in hand at once when fired.
pub async fn run_with_abort(
    settings: WorkerSettings,
    shutdown: CancellationToken,
    abort: CancellationToken,
) -> anyhow::Result<()> {
    let gpu = tokio::task::spawn_blocking(gpu::Gpu::new).await??;
    tracing::info!(adapter = %gpu.info.name, backend = ?gpu.info.backend, "GPU ready");
    let s = &settings.shared;
    // A job needs a connection only for its claim, lease renewals and outcome, briefly each.
    let connections = (settings.concurrency as u32 / 2 + 4).min(24);
    let Some(pool) = db::connect_waiting(&s.database, connections, &shutdown).await? else {
        return Ok(());
    };
    db::migrate(&pool).await?;
    // The consumer connects (and reconnects) to the broker itself; publishing connects on use.
    let publisher = Arc::new(Publisher::lazy(s.amqp_url.expose(), &s.queue));
    let storage = Storage::from_env().await;
    // A supervisor (the scaler's local backend) names its children; else a name of our own.
    let worker_id = settings.worker_id.clone().unwrap_or_else(|| {
        format!(
            "{}-{}-{}",
            Some(settings.hostname.as_str())
                .filter(|h| !h.is_empty())
                .unwrap_or("worker"),
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        )
    });
    tracing::info!(%worker_id, "worker starting");
    let reaper_task = {
        let (pool, publisher, storage, settings, stop) = (
            pool.clone(),
            publisher.clone(),
            storage.clone(),
            s.clone(),
            shutdown.clone(),
        );
        tokio::spawn(
            async move { reaper::run(pool, &publisher, Some(&storage), &settings, stop).await },
        )
    };
    let presence = Arc::new(presence::Presence::new(
        settings.ecs_agent_uri.as_deref(),
        s.lifecycle.lease,
    ));
    let ctx = Arc::new(job::WorkerContext::new(
        pool,
        storage,
        publisher,
        Arc::new(gpu),
        s.clone(),
        worker_id,
        abort,
        presence,
    ));
    let presence_stop = CancellationToken::new();
    let presence_task = tokio::spawn(presence::run(
        ctx.pool.clone(),
        ctx.gpu.clone(),
        ctx.worker_id.clone(),
        ctx.presence.clone(),
        settings.hostname.clone(),
        settings.concurrency,
        presence_stop.clone(),
    ));
    // Leases are renewed, and cancels heard, until the jobs in hand are done.
    let leases_stop = CancellationToken::new();
    let lease = s.lifecycle.lease;
    let renewer = tokio::spawn(leases::renew(
        ctx.pool.clone(),
        ctx.leases.clone(),
        lease,
        leases_stop.clone(),
    ));
    let listener = tokio::spawn(leases::listen_for_cancels(
        ctx.pool.clone(),
        ctx.leases.clone(),
        leases_stop.clone(),
    ));
    consumer::run(ctx, settings.concurrency, settings.drain, shutdown).await;
    leases_stop.cancel();
    let _ = tokio::join!(renewer, listener);
    // Only now, with nothing in hand, does the task lose its protection and the row its life.
    presence_stop.cancel();
    let _ = presence_task.await;
    let _ = reaper_task.await;
    Ok(())
}
