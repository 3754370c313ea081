//! The maintenance loop: the [`reaper`](crate::reaper) and the [`retention`](crate::retention)
//! sweep every `reaper_interval`, and the [`orphans`](crate::orphans) sweep every
//! `orphan_sweep_interval`, in the one process that the [`election`](crate::election) chose.
//! Every API and worker runs this loop; all but one of them only contend for the lock.

use crate::config::Settings;
use crate::election::Election;
use crate::queue::Publisher;
use crate::storage::Storage;
use crate::{orphans, reaper, retention};
use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio_util::sync::CancellationToken;

/// What the loop needs, and how many sweeps it has done (tests watch the count).
pub struct Maintenance {
    pub pool: PgPool,
    pub publisher: Arc<Publisher>,
    pub storage: Storage,
    pub settings: Settings,
    sweeps: AtomicU64,
    /// When the next orphan sweep is due.
    orphans_due: std::sync::Mutex<tokio::time::Instant>,
}

impl Maintenance {
    pub fn new(
        pool: PgPool,
        publisher: Arc<Publisher>,
        storage: Storage,
        settings: Settings,
    ) -> Self {
        Self {
            pool,
            publisher,
            storage,
            orphans_due: std::sync::Mutex::new(
                tokio::time::Instant::now() + settings.lifecycle.orphan_sweep_interval,
            ),
            settings,
            sweeps: AtomicU64::new(0),
        }
    }

    /// Sweeps this process has done as the leader.
    pub fn sweeps(&self) -> u64 {
        self.sweeps.load(Ordering::SeqCst)
    }

    /// Contends for the lock every `reaper_interval` and, while it leads, sweeps; until
    /// `shutdown`, when it gives the lock up so another process takes over at once.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut election = Election::new(&self.settings.database);
        let mut tick = tokio::time::interval(self.settings.lifecycle.reaper_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if !election.lead().await {
                continue;
            }
            // A sweep once begun finishes (its publishes are bounded by the broker's timeouts).
            self.sweep().await;
            self.sweeps.fetch_add(1, Ordering::SeqCst);
        }
        election.resign().await;
    }

    /// One round: the reaper, then retention, then (when due) the orphan sweep. A failure of any
    /// is logged and tried again next round.
    async fn sweep(&self) {
        let s = &self.settings;
        if let Err(e) = reaper::sweep(&self.pool, &self.publisher, &s.lifecycle).await {
            tracing::warn!(error = %e, "reaper sweep failed; will retry");
        }
        if s.retention != Default::default()
            && let Err(e) = retention::sweep(&self.pool, &self.storage, s).await
        {
            tracing::warn!(error = %e, "retention sweep failed; will retry");
        }
        let now = tokio::time::Instant::now();
        let due = {
            let mut at = self.orphans_due.lock().unwrap_or_else(|e| e.into_inner());
            let due = now >= *at;
            if due {
                *at = now + s.lifecycle.orphan_sweep_interval;
            }
            due
        };
        if due
            && let Err(e) =
                orphans::sweep(&self.pool, &self.storage, s, s.lifecycle.orphan_grace).await
        {
            tracing::warn!(error = %e, "orphan sweep failed; will retry");
        }
    }
}
