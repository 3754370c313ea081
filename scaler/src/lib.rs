//! `gpuq-scaler`: sizes the worker pool from the backlog in Postgres (the source of truth).
//!
//! Every `interval` it reads the backlog, asks the [`policy`] for a pool size and applies it
//! through a backend: [`local`] (worker processes as its children) or [`ecs`] (an ECS
//! service's desired count). Each decision is one JSON line on stdout; logs go to stderr.

pub mod ecs;
pub mod local;
pub mod policy;

use clap::{Parser, ValueEnum};
use gpuq_shared::db;
use policy::{Decision, Memory, Observation, Policy, Reason};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// gpuq-worker processes, children of the scaler.
    Local,
    /// An AWS ECS service's desiredCount.
    Ecs,
}

/// Sizes the gpuq worker pool from the backlog: ceil((queued + running) / target-backlog),
/// clamped to [min, max]; scale-out at once, scale-in after --idle-seconds, one step at a time.
#[derive(Debug, Clone, Parser)]
#[command(name = "gpuq-scaler", version)]
pub struct Args {
    #[arg(long, env = "GPUQ_SCALER_BACKEND", value_enum, default_value = "local")]
    pub backend: Backend,
    /// Fewest workers, also when nothing is queued.
    #[arg(long, env = "GPUQ_SCALER_MIN", default_value_t = 0)]
    pub min: u32,
    /// Most workers.
    #[arg(long, env = "GPUQ_SCALER_MAX", default_value_t = 4)]
    pub max: u32,
    /// Jobs (queued or running) one worker is meant to carry.
    #[arg(long, env = "GPUQ_SCALER_TARGET_BACKLOG", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub target_backlog: u32,
    /// Seconds the pool must have been larger than needed before it shrinks.
    #[arg(long, env = "GPUQ_SCALER_IDLE_SECONDS", default_value_t = 60.0)]
    pub idle_seconds: f64,
    /// Least seconds between two scale-in steps.
    #[arg(long, env = "GPUQ_SCALER_STEP_SECONDS", default_value_t = 10.0)]
    pub step_seconds: f64,
    /// Seconds between two looks at the backlog.
    #[arg(long, env = "GPUQ_SCALER_INTERVAL_SECONDS", default_value_t = 2.0)]
    pub interval_seconds: f64,
    /// local: the worker binary (default: gpuq-worker beside gpuq-scaler).
    #[arg(long, env = "GPUQ_SCALER_WORKER_BIN")]
    pub worker_bin: Option<PathBuf>,
    /// ecs: the cluster of the worker service.
    #[arg(long, env = "GPUQ_ECS_CLUSTER")]
    pub cluster: Option<String>,
    /// ecs: the worker service.
    #[arg(long, env = "GPUQ_ECS_SERVICE")]
    pub service: Option<String>,
    /// ecs: also publish BacklogPerWorker to CloudWatch, in this namespace.
    #[arg(long, env = "GPUQ_CLOUDWATCH_NAMESPACE")]
    pub cloudwatch_namespace: Option<String>,
}

impl Args {
    /// The policy the flags describe, once they are known to make sense together.
    pub fn policy(&self) -> anyhow::Result<Policy> {
        anyhow::ensure!(
            self.backend != Backend::Ecs || (self.cluster.is_some() && self.service.is_some()),
            "--backend ecs needs --cluster and --service (or GPUQ_ECS_CLUSTER, GPUQ_ECS_SERVICE)"
        );
        anyhow::ensure!(
            self.min <= self.max,
            "--min ({}) must not exceed --max ({})",
            self.min,
            self.max
        );
        let seconds = |name: &str, s: f64| {
            Duration::try_from_secs_f64(s)
                .map_err(|_| anyhow::anyhow!("{name}: {s} is not a duration"))
        };
        Ok(Policy {
            min: self.min,
            max: self.max,
            target_backlog: self.target_backlog,
            idle: seconds("--idle-seconds", self.idle_seconds)?,
            step_interval: seconds("--step-seconds", self.step_seconds)?,
        })
    }

    fn interval(&self) -> anyhow::Result<Duration> {
        Duration::try_from_secs_f64(self.interval_seconds)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| anyhow::anyhow!("--interval-seconds must be positive"))
    }
}

/// One line of the decision log: the time, and what was decided on what.
#[derive(Debug, Serialize)]
struct DecisionLine {
    ts: String,
    #[serde(flatten)]
    decided: Decided,
}

#[derive(Debug, Serialize, PartialEq, Clone, Copy)]
struct Decided {
    queued: u64,
    running: u64,
    current: u32,
    desired: u32,
    reason: Reason,
    /// Workers alive in the `workers` table (heard from within 30 s).
    workers: i64,
    #[serde(flatten)]
    backend: BackendState,
}

/// What the backend adds to a decision line.
#[derive(Debug, Serialize, PartialEq, Clone, Copy)]
#[serde(untagged)]
enum BackendState {
    Local {
        draining: u32,
        started: u32,
        stopped: u32,
        kept_busy: u32,
    },
    Ecs {
        tasks_running: u32,
        tasks_pending: u32,
    },
}

enum Pool {
    Local(local::LocalPool),
    Ecs(ecs::EcsService),
}

/// Runs until `shutdown`; the local backend then stops its workers and waits for them to drain.
pub async fn run(args: Args, shutdown: CancellationToken) -> anyhow::Result<()> {
    let policy = args.policy()?;
    let interval = args.interval()?;
    let database = gpuq_shared::config::DatabaseSettings::from_env()?;
    let Some(pg) = db::connect_waiting(&database, 2, &shutdown).await? else {
        return Ok(());
    };
    db::migrate(&pg).await?;
    let mut pool = match args.backend {
        Backend::Local => Pool::Local(local::LocalPool::new(
            args.worker_bin
                .clone()
                .unwrap_or_else(local::LocalPool::default_bin),
            pg.clone(),
            args.target_backlog,
        )),
        Backend::Ecs => {
            let (Some(cluster), Some(service)) = (args.cluster.clone(), args.service.clone())
            else {
                anyhow::bail!("--backend ecs needs --cluster and --service");
            };
            Pool::Ecs(
                ecs::EcsService::new(cluster, service, args.cloudwatch_namespace.clone()).await,
            )
        }
    };
    tracing::info!(?policy, backend = ?args.backend, "scaler started");
    let mut memory = Memory::default();
    let mut last: Option<Decided> = None;
    let mut failures = 0u32;
    loop {
        let result = tick(&pg, &policy, &mut pool, &mut memory, &mut last).await;
        let wait = match result {
            Ok(()) => {
                failures = 0;
                interval
            }
            Err(e) => {
                failures += 1;
                let wait =
                    (interval * 2u32.saturating_pow(failures.min(6))).min(Duration::from_secs(60));
                tracing::warn!(error = %e, retry_in = ?wait, "scaler tick failed");
                wait
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    if let Pool::Local(local) = &mut pool {
        tracing::info!("stopping the workers; each drains what it holds");
        local.shutdown().await;
    }
    Ok(())
}

async fn tick(
    pg: &sqlx::PgPool,
    policy: &Policy,
    pool: &mut Pool,
    memory: &mut Memory,
    last: &mut Option<Decided>,
) -> anyhow::Result<()> {
    let backlog = db::backlog(pg).await?;
    let (current, tasks) = match pool {
        Pool::Local(local) => (local.current(), None),
        Pool::Ecs(service) => {
            let counts = service.counts().await?;
            (counts.desired, Some(counts))
        }
    };
    let observation = Observation {
        queued: backlog.queued,
        running: backlog.running,
        current,
    };
    let (decision, next_memory) = policy.decide(&observation, *memory, Instant::now());
    let Decision { desired, reason } = decision;
    let mut applied = true;
    let backend = match pool {
        Pool::Local(local) => {
            let a = local.scale_to(desired).await?;
            // A step blocked by busy workers is taken again on the next tick.
            applied = a.kept_busy == 0;
            BackendState::Local {
                draining: local.draining(),
                started: a.started,
                stopped: a.stopped,
                kept_busy: a.kept_busy,
            }
        }
        Pool::Ecs(service) => {
            let tasks = tasks.expect("counted above");
            if desired != current {
                service.set_desired(desired).await?;
            }
            if let Err(e) = service
                .publish_backlog(backlog.queued + backlog.running, tasks.running)
                .await
            {
                tracing::warn!(error = %e, "BacklogPerWorker not published");
            }
            BackendState::Ecs {
                tasks_running: tasks.running,
                tasks_pending: tasks.pending,
            }
        }
    };
    if applied {
        *memory = next_memory;
    }
    let workers = db::workers_alive(pg, Duration::from_secs(30))
        .await
        .unwrap_or(-1);
    let decided = Decided {
        queued: backlog.queued,
        running: backlog.running,
        current,
        desired,
        reason,
        workers,
        backend,
    };
    // One line per decision: printed when anything but the time differs from the last one.
    if *last != Some(decided) {
        let line = DecisionLine {
            ts: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            decided,
        };
        let mut out = std::io::stdout().lock();
        serde_json::to_writer(&mut out, &line)?;
        writeln!(out)?;
        out.flush()?;
        *last = Some(decided);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Args {
        Args::try_parse_from(std::iter::once("gpuq-scaler").chain(line.split_whitespace())).unwrap()
    }

    #[test]
    fn flags_that_cannot_work_together_are_refused_before_anything_starts() {
        assert!(args("--min 5 --max 2").policy().is_err());
        assert!(args("--backend ecs").policy().is_err());
        assert!(args("--backend ecs --cluster c").policy().is_err());
        assert!(args("--idle-seconds=-1").policy().is_err());
        assert!(Args::try_parse_from(["gpuq-scaler", "--target-backlog", "0"]).is_err());
        let p = args("--backend ecs --cluster c --service s --min 1 --max 8 --target-backlog 10 --idle-seconds 300")
            .policy()
            .unwrap();
        assert_eq!((p.min, p.max, p.target_backlog), (1, 8, 10));
        assert_eq!(p.idle, Duration::from_secs(300));
        assert_eq!(p.step_interval, Duration::from_secs(10));
    }
}
