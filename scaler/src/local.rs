//! The `local` backend: `gpuq-worker` processes as the scaler's children.
//!
//! - Each child is named (`GPUQ_WORKER_ID`), so the jobs table says which children are busy.
//! - Scale-in stops an idle child with SIGTERM, so it drains; a busy child is never chosen.
//! - Children get SIGTERM too when the scaler dies (`PR_SET_PDEATHSIG`), and drain.

use gpuq_shared::config::non_empty_var;
use gpuq_shared::db;
use sqlx::PgPool;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

pub struct LocalPool {
    bin: PathBuf,
    /// `GPUQ_WORKER_CONCURRENCY` for children, where the environment does not set it.
    concurrency: u32,
    pool: PgPool,
    /// Prefix of the children's worker ids: unique per scaler run.
    prefix: String,
    started: u64,
    children: Vec<Worker>,
    /// Workers that exited on their own soon after starting, in a row: each doubles the wait
    /// before the next start, so a worker that cannot start (no GPU, bad settings) is not
    /// restarted in a tight loop.
    early_exits: u32,
    spawn_not_before: Option<Instant>,
}

/// A worker that exits on its own sooner than this after its start counts as a failed start.
const EARLY_EXIT: Duration = Duration::from_secs(30);

struct Worker {
    id: String,
    process: Child,
    started_at: Instant,
    /// Sent SIGTERM: finishing what it holds, no longer part of the pool.
    draining: bool,
}

impl Worker {
    /// SIGTERM: the worker stops taking jobs and drains; it leaves the pool at once.
    fn terminate(&mut self) {
        if let Some(pid) = self.process.id() {
            // SAFETY: kill(2) on our own child's pid, which we have not yet reaped.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        self.draining = true;
    }
}

/// What happened to the pool on one `scale_to`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub started: u32,
    pub stopped: u32,
    /// Surplus workers left running because each of them holds a job.
    pub kept_busy: u32,
}

impl LocalPool {
    /// Children run `concurrency` jobs at once (and prefetch as many) unless
    /// `GPUQ_WORKER_CONCURRENCY` says otherwise: the scaler passes its target backlog, the load
    /// it sized each worker for. A worker that prefetched more would leave the workers started
    /// for a burst with nothing to do.
    pub fn new(bin: PathBuf, pool: PgPool, concurrency: u32) -> Self {
        let prefix = format!(
            "local-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        Self {
            bin,
            concurrency,
            pool,
            prefix,
            started: 0,
            children: Vec::new(),
            early_exits: 0,
            spawn_not_before: None,
        }
    }

    /// The worker binary beside the scaler's own, as `cargo build` and the images lay them out.
    pub fn default_bin() -> PathBuf {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("gpuq-worker")))
            .unwrap_or_else(|| PathBuf::from("gpuq-worker"))
    }

    /// Forgets children that have exited; counts those not draining.
    pub fn current(&mut self) -> u32 {
        let mut early_exit = false;
        self.children.retain_mut(|w| match w.process.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                if w.draining {
                    tracing::info!(worker = %w.id, %status, "worker stopped");
                } else {
                    tracing::warn!(worker = %w.id, %status, "worker exited on its own");
                    early_exit |= w.started_at.elapsed() < EARLY_EXIT;
                }
                false
            }
            Err(e) => {
                tracing::warn!(worker = %w.id, error = %e, "cannot wait on worker; forgetting it");
                false
            }
        });
        if self
            .children
            .iter()
            .any(|w| !w.draining && w.started_at.elapsed() >= EARLY_EXIT)
        {
            self.early_exits = 0;
        }
        if early_exit {
            self.early_exits += 1;
            let wait = Duration::from_secs(1 << self.early_exits.min(6)); // 2 s … 64 s
            tracing::warn!(retry_in = ?wait, "worker failed soon after its start; waiting");
            self.spawn_not_before = Some(Instant::now() + wait);
        }
        self.children.iter().filter(|w| !w.draining).count() as u32
    }

    /// Children draining after a SIGTERM.
    pub fn draining(&self) -> u32 {
        self.children.iter().filter(|w| w.draining).count() as u32
    }

    /// Starts or stops children until `desired` are in the pool, never stopping a busy one.
    pub async fn scale_to(&mut self, desired: u32) -> anyhow::Result<Applied> {
        let mut applied = Applied::default();
        let current = self.current();
        let may_spawn = self.spawn_not_before.is_none_or(|t| Instant::now() >= t);
        if may_spawn {
            for _ in current..desired {
                self.spawn()?;
                applied.started += 1;
            }
        }
        if desired < current {
            let serving: Vec<String> = self
                .children
                .iter()
                .filter(|w| !w.draining)
                .map(|w| w.id.clone())
                .collect();
            let busy = db::workers_busy(&self.pool, &serving).await?;
            let surplus = current - desired;
            // The most recently started idle workers go first: the oldest have warm caches.
            for w in self.children.iter_mut().rev() {
                if applied.stopped == surplus {
                    break;
                }
                if w.draining || busy.contains(&w.id) {
                    continue;
                }
                w.terminate();
                applied.stopped += 1;
                tracing::info!(worker = %w.id, "stopping idle worker (SIGTERM: it drains)");
            }
            applied.kept_busy = surplus - applied.stopped;
        }
        Ok(applied)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        self.started += 1;
        let id = format!("{}-{}", self.prefix, self.started);
        let mut command = Command::new(&self.bin);
        command
            .env("GPUQ_WORKER_ID", &id)
            .env(
                "GPUQ_WORKER_CONCURRENCY",
                non_empty_var("GPUQ_WORKER_CONCURRENCY")
                    .unwrap_or_else(|| self.concurrency.to_string()),
            )
            .stdin(Stdio::null())
            // stdout is the scaler's decision log: the workers' own logs go to stderr.
            .stdout(std::io::stderr())
            .stderr(std::io::stderr());
        // SAFETY: prctl is async-signal-safe; it runs in the child between fork and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let process = command
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", self.bin.display()))?;
        tracing::info!(worker = %id, pid = process.id(), "started worker");
        self.children.push(Worker {
            id,
            process,
            started_at: Instant::now(),
            draining: false,
        });
        Ok(())
    }

    /// Stops every child with SIGTERM and waits for each to drain and exit.
    pub async fn shutdown(&mut self) {
        for w in &mut self.children {
            w.terminate();
        }
        for w in &mut self.children {
            let _ = w.process.wait().await;
        }
        self.children.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_worker_that_dies_at_start_is_not_restarted_in_a_tight_loop() {
        // Never queried: scale-out alone needs no database.
        let pg = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let mut pool = LocalPool::new(PathBuf::from("/bin/false"), pg, 8);
        assert_eq!(pool.scale_to(1).await.unwrap().started, 1);
        while pool.current() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(pool.scale_to(2).await.unwrap().started, 0, "backing off");
        assert_eq!(pool.early_exits, 1);
        pool.spawn_not_before = Some(Instant::now());
        assert_eq!(
            pool.scale_to(1).await.unwrap().started,
            1,
            "tries again after the wait"
        );
        while pool.current() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(pool.early_exits, 2, "a second failure doubles the wait");
        let wait = pool.spawn_not_before.unwrap() - Instant::now();
        assert!(
            wait > Duration::from_secs(3) && wait <= Duration::from_secs(4),
            "{wait:?}"
        );
    }
}
