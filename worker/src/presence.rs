//! How a worker shows itself to the pool:
//! - its row in `workers`: the adapter it runs on (name, backend, device limits), how many jobs
//!   it runs at once and has in hand, a heartbeat, and when it stopped;
//! - on ECS, the task's scale-in protection while it holds a job
//!   (`PUT $ECS_AGENT_URI/task-protection/v1/state`), so a scale-in never stops a busy task.
//!   Outside ECS (`ECS_AGENT_URI` unset) protection is a no-op.

use crate::gpu::Gpu;
use gpuq_shared::db::{self, WorkerReport};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// How often the row's heartbeat and job count are written.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// The worker's ECS task protection, when it runs on ECS.
pub struct Presence {
    protection: Option<Mutex<Protection>>,
    /// Jobs this worker is claiming or running; the row's `running_jobs` and the task's
    /// protection follow it.
    pub running: AtomicUsize,
}

struct Protection {
    client: reqwest::Client,
    url: String,
    /// Renewed this often while a job is in hand: the lease's own period.
    renew_every: Duration,
    /// Each renewal protects for this long, so a frozen worker's protection lapses soon after
    /// its lease does.
    expires_minutes: u64,
    /// `Some(when the next renewal is due)` while the task is protected.
    renew_at: Option<Instant>,
}

impl Presence {
    /// Protection through the ECS agent when `ECS_AGENT_URI` is set; renewed every `lease`.
    pub fn new(ecs_agent_uri: Option<&str>, lease: Duration) -> Self {
        let protection = ecs_agent_uri.map(|agent| {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("an HTTP client without TLS always builds");
            Mutex::new(Protection {
                client,
                url: format!("{}/task-protection/v1/state", agent.trim_end_matches('/')),
                renew_every: lease.max(Duration::from_secs(1)),
                expires_minutes: (3 * lease.as_secs()).div_ceil(60).max(1),
                renew_at: None,
            })
        });
        Self {
            protection,
            running: AtomicUsize::new(0),
        }
    }

    /// Makes sure the task is protected before a job is claimed. A failure is logged and the
    /// claim goes ahead: should ECS stop the task anyway, SIGTERM drains it.
    pub async fn protect(&self) {
        let Some(p) = &self.protection else { return };
        let mut p = p.lock().await;
        if p.renew_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        p.set(true).await;
    }

    /// Renews protection while `running > 0`; drops it once nothing is in hand. Reads the count
    /// under the lock, so it cannot drop protection a claim has just asked for.
    async fn follow(&self) {
        let Some(p) = &self.protection else { return };
        let mut p = p.lock().await;
        let busy = self.running.load(Ordering::SeqCst) > 0;
        match p.renew_at {
            Some(at) if busy && Instant::now() >= at => p.set(true).await,
            Some(_) if !busy => p.set(false).await,
            None if busy => p.set(true).await,
            _ => {}
        }
    }
}

impl Protection {
    async fn set(&mut self, enabled: bool) {
        let body = if enabled {
            json!({"ProtectionEnabled": true, "ExpiresInMinutes": self.expires_minutes})
        } else {
            json!({"ProtectionEnabled": false})
        };
        match self.put(&body).await {
            Ok(()) => {
                self.renew_at = enabled.then(|| Instant::now() + self.renew_every);
                tracing::debug!(enabled, "task scale-in protection set");
            }
            // Left as it was: the next check (within a second) tries again.
            Err(e) => tracing::warn!(enabled, error = %e, "task scale-in protection not set"),
        }
    }

    async fn put(&self, body: &serde_json::Value) -> Result<(), String> {
        let response = self
            .client
            .put(&self.url)
            .json(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let answer: serde_json::Value = response.json().await.unwrap_or_default();
        // The agent answers 200 with a `failure` (or `error`) member when ECS refused.
        match (
            status.is_success(),
            answer.get("failure").or(answer.get("error")),
        ) {
            (true, None) => Ok(()),
            (_, Some(why)) => Err(format!("{status}: {why}")),
            (false, None) => Err(status.to_string()),
        }
    }
}

/// Registers the worker in `workers`, then keeps its heartbeat and protection up to date until
/// `stop`; then drops protection and records the stop.
pub async fn run(
    pool: sqlx::PgPool,
    gpu: Arc<Gpu>,
    worker_id: String,
    presence: Arc<Presence>,
    hostname: String,
    concurrency: usize,
    stop: CancellationToken,
) {
    let info = &gpu.info;
    let limits = gpu.device.limits();
    let driver = format!("{} {}", info.driver, info.driver_info);
    let report = WorkerReport {
        id: &worker_id,
        hostname: &hostname,
        pid: std::process::id(),
        adapter: &info.name,
        backend: &info.backend.to_string(),
        device_type: &format!("{:?}", info.device_type),
        driver: driver.trim(),
        limits: json!({
            "max_buffer_size": limits.max_buffer_size,
            "max_storage_buffer_binding_size": limits.max_storage_buffer_binding_size,
            "max_binding_bytes": gpu.max_binding_bytes(),
            "max_compute_invocations_per_workgroup": limits.max_compute_invocations_per_workgroup,
            "max_compute_workgroup_storage_size": limits.max_compute_workgroup_storage_size,
            "max_compute_workgroups_per_dimension": limits.max_compute_workgroups_per_dimension,
        }),
        concurrency: concurrency as u32,
        version: env!("CARGO_PKG_VERSION"),
    };
    let mut registered = false;
    let mut last_beat = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = tick.tick() => false,
        };
        presence.follow().await;
        if stopping {
            break;
        }
        let running = presence.running.load(Ordering::SeqCst) as u32;
        if !registered {
            match db::worker_register(&pool, &report).await {
                Ok(()) => registered = true,
                Err(e) => tracing::warn!(error = %e, "could not register in workers; retrying"),
            }
        } else if last_beat.elapsed() >= HEARTBEAT {
            match db::worker_heartbeat(&pool, &worker_id, running).await {
                Ok(()) => last_beat = Instant::now(),
                Err(e) => tracing::warn!(error = %e, "worker heartbeat failed"),
            }
        }
    }
    if registered && let Err(e) = db::worker_stopped(&pool, &worker_id).await {
        tracing::warn!(error = %e, "could not record the worker's stop");
    }
}
