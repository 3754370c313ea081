//! The gpuq GPU worker: consumes job ids from RabbitMQ, runs them on one wgpu device, records
//! outcomes in Postgres and outputs in S3. Also contends to run maintenance (the reaper, so jobs
//! of a crashed peer move on, and retention), which one elected process does at a time.

pub mod algorithms;
pub mod artifact;
pub mod consumer;
pub mod gpu;
pub mod job;
pub mod leases;
pub mod presence;
pub mod synthetic;

use gpuq_shared::config::{Settings, non_empty_var, parse_var, var_or};
use gpuq_shared::db;
use gpuq_shared::maintenance::Maintenance;
use gpuq_shared::queue::Publisher;
use gpuq_shared::storage::Storage;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub shared: Settings,
    /// Jobs this worker runs alone at once: training, S3 inputs, large inline inputs
    /// (`GPUQ_WORKER_CONCURRENCY`).
    pub concurrency: usize,
    /// Jobs in hand at once (a shared message holds one per job it announces), and so the most
    /// small inline inference jobs run in one batch; also the AMQP prefetch, in messages
    /// (`GPUQ_WORKER_PREFETCH`; at least `concurrency`).
    pub prefetch: usize,
    /// On shutdown, how long to let jobs in hand finish before leaving them to the reaper.
    pub drain: Duration,
    /// The name it goes by in `jobs.worker_id` and `workers` (`GPUQ_WORKER_ID`, set by a
    /// supervisor such as the scaler); `None` makes one from the host name and pid.
    pub worker_id: Option<String>,
    /// `HOSTNAME`, recorded in `workers`.
    pub hostname: String,
    /// `ECS_AGENT_URI`: on ECS, the agent the task's scale-in protection is set through.
    pub ecs_agent_uri: Option<String>,
    pub budgets: Budgets,
    /// Train and run every algorithm once before taking a message (`GPUQ_WORKER_WARM_UP`, on
    /// by default; see `algorithms::warm_up`).
    pub warm_up: bool,
}

/// How much memory the jobs of one worker may hold, and in what pieces outputs are written.
#[derive(Debug, Clone, Copy)]
pub struct Budgets {
    /// Bytes the inputs of the jobs in hand may hold at once (`GPUQ_WORKER_MEMORY_BYTES`).
    pub memory_bytes: u64,
    /// Bytes of models kept loaded between jobs, least recently used evicted first
    /// (`GPUQ_MODEL_CACHE_BYTES`).
    pub model_cache_bytes: u64,
    /// Size of the parts an output is uploaded in (`GPUQ_OUTPUT_PART_BYTES`): S3 takes at most
    /// 10,000 parts of at least 5 MiB, so this bounds an output at 10,000 × it.
    pub output_part_bytes: usize,
}

impl Default for Budgets {
    fn default() -> Self {
        Self {
            memory_bytes: 4 << 30,
            model_cache_bytes: 2 << 30,
            output_part_bytes: 8 << 20,
        }
    }
}

impl WorkerSettings {
    pub fn from_env() -> anyhow::Result<Self> {
        let d = Budgets::default();
        let concurrency = parse_var("GPUQ_WORKER_CONCURRENCY", 32usize)?.clamp(1, 256);
        Ok(Self {
            shared: Settings::from_env()?,
            concurrency,
            prefetch: parse_var("GPUQ_WORKER_PREFETCH", 1024usize)?.clamp(concurrency, 4096),
            drain: Duration::from_secs_f64(parse_var("GPUQ_DRAIN_SECONDS", 30.0)?),
            worker_id: non_empty_var("GPUQ_WORKER_ID"),
            hostname: var_or("HOSTNAME", ""),
            ecs_agent_uri: non_empty_var("ECS_AGENT_URI"),
            warm_up: parse_var("GPUQ_WORKER_WARM_UP", 1u8)? == 1,
            budgets: Budgets {
                memory_bytes: parse_var("GPUQ_WORKER_MEMORY_BYTES", d.memory_bytes)?,
                model_cache_bytes: parse_var("GPUQ_MODEL_CACHE_BYTES", d.model_cache_bytes)?,
                output_part_bytes: parse_var("GPUQ_OUTPUT_PART_BYTES", d.output_part_bytes)?
                    .max(gpuq_shared::storage::MIN_PART_BYTES),
            },
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
    let started = std::time::Instant::now();
    // Every kernel is dispatched once before the first message is taken, so no job pays for a
    // cold driver's compile (`algorithms::warm_up`).
    let warm_up = settings.warm_up;
    let gpu = tokio::task::spawn_blocking(move || {
        let gpu = gpu::Gpu::new()?;
        if !warm_up {
            return Ok::<_, gpu::GpuError>(gpu);
        }
        // A failed warm-up leaves the first jobs to compile what they use: worth a warning,
        // not a worker that will not start.
        match algorithms::warm_up(&gpu) {
            Ok(steps) => {
                for (step, took) in &steps {
                    tracing::debug!(step, seconds = took.as_secs_f64(), "warm-up step");
                }
            }
            Err(e) => tracing::warn!(error = %e, "warming the device up failed"),
        }
        Ok::<_, gpu::GpuError>(gpu)
    })
    .await??;
    tracing::info!(adapter = %gpu.info.name, backend = ?gpu.info.backend, warm_up,
        seconds = started.elapsed().as_secs_f64(), "GPU ready");
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
        let maintenance =
            Maintenance::new(pool.clone(), publisher.clone(), storage.clone(), s.clone());
        let stop = shutdown.clone();
        tokio::spawn(async move { maintenance.run(stop).await })
    };
    let ctx = job::WorkerContext::new(
        pool,
        storage,
        publisher,
        Arc::new(gpu),
        &settings,
        worker_id,
        abort,
    );
    let ctx = Arc::new(ctx);
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
    let capacity = consumer::Capacity {
        concurrency: settings.concurrency,
        prefetch: settings.prefetch,
    };
    consumer::run(ctx, capacity, settings.drain, shutdown).await;
    leases_stop.cancel();
    let _ = tokio::join!(renewer, listener);
    // Only now, with nothing in hand, does the task lose its protection and the row its life.
    presence_stop.cancel();
    let _ = presence_task.await;
    let _ = reaper_task.await;
    Ok(())
}
