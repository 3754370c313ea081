//! The leases of the jobs a worker holds, renewed together: every third of the lease, one
//! statement renews them all and carries each job's progress. A job whose row no longer matches
//! its attempt (canceled, or its lease lost to the reaper) is told to stop.
//!
//! A cancel does not wait for the next renewal: canceling a running job NOTIFYs its id, and the
//! listener here stops the job at once. When the listener loses its connection it reconnects
//! and the leases are renewed at once, so a cancel sent meanwhile is caught as well; should the
//! listener stay down, renewals still catch every cancel within a third of the lease.

use crate::algorithms::Control;
use gpuq_shared::JobId;
use gpuq_shared::db::{self, HeldLease};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The jobs this worker holds, each with its attempt and the control of its run.
#[derive(Default)]
pub struct Leases {
    held: Mutex<HashMap<JobId, Held>>,
    /// Asks the renewer for a renewal now rather than at its next tick.
    renew_now: Notify,
}

struct Held {
    attempt: i32,
    ctl: Arc<Control>,
}

/// A job's place among the leases being renewed; dropping it lets the lease go.
pub struct Hold {
    leases: Arc<Leases>,
    id: JobId,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.leases.held().remove(&self.id);
    }
}

impl Leases {
    /// Renews the lease of `attempt` of the job from now on, and stops `ctl` when the attempt
    /// loses the job, until the returned [`Hold`] is dropped.
    pub fn hold(self: &Arc<Self>, id: JobId, attempt: i32, ctl: Arc<Control>) -> Hold {
        self.held().insert(id, Held { attempt, ctl });
        Hold {
            leases: self.clone(),
            id,
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Held>> {
        self.held.lock().expect("leases lock")
    }

    /// The job was canceled: stops it if this worker runs it.
    fn cancel(&self, id: JobId) {
        if let Some(h) = self.held().get(&id) {
            tracing::info!(job = %id, attempt = h.attempt, "canceled: stopping");
            h.ctl.request_stop();
        }
    }

    /// One renewal of every lease held; no statement when none is.
    async fn renew(&self, pool: &sqlx::PgPool, lease: Duration) {
        let (batch, controls): (Vec<HeldLease>, Vec<Arc<Control>>) =
            self.held()
                .iter()
                .map(|(id, h)| {
                    let progress = h.ctl.take_progress().map(
                        |(fraction, message)| json!({"fraction": fraction, "message": message}),
                    );
                    let held = HeldLease {
                        id: *id,
                        attempt: h.attempt,
                        progress,
                    };
                    (held, h.ctl.clone())
                })
                .unzip();
        if batch.is_empty() {
            return;
        }
        match db::jobs_renew_leases(pool, &batch, lease).await {
            Ok(renewed) => {
                for (held, ctl) in batch.iter().zip(controls) {
                    if !renewed.contains(&held.id) {
                        tracing::info!(job = %held.id, attempt = held.attempt,
                            "the attempt no longer holds the job (canceled or lease lost): stopping");
                        ctl.request_stop();
                    }
                }
            }
            Err(e) => {
                tracing::warn!(jobs = batch.len(), error = %e, "lease renewal failed; retrying")
            }
        }
    }
}

/// Renews every lease held, every third of `lease` (and whenever asked), until `stop`.
pub async fn renew(
    pool: sqlx::PgPool,
    leases: Arc<Leases>,
    lease: Duration,
    stop: CancellationToken,
) {
    let every = (lease / 3).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
            _ = leases.renew_now.notified() => tick.reset(),
        }
        leases.renew(&pool, lease).await;
    }
}

/// Stops a job of this worker as soon as it is canceled (the cancel's NOTIFY), until `stop`.
pub async fn listen_for_cancels(pool: sqlx::PgPool, leases: Arc<Leases>, stop: CancellationToken) {
    const FIRST_RETRY: Duration = Duration::from_millis(250);
    let mut retry = FIRST_RETRY;
    loop {
        let connected = tokio::select! {
            _ = stop.cancelled() => return,
            l = db::job_canceled_listener(&pool) => l,
        };
        match connected {
            Ok(mut listener) => {
                retry = FIRST_RETRY;
                // Whatever was canceled while nobody listened.
                leases.renew_now.notify_one();
                loop {
                    let got = tokio::select! {
                        _ = stop.cancelled() => return,
                        n = listener.try_recv() => n,
                    };
                    match got {
                        Ok(Some(n)) => match n.payload().parse::<JobId>() {
                            Ok(id) => leases.cancel(id),
                            Err(_) => {
                                tracing::warn!(payload = n.payload(), "a cancel that names no job")
                            }
                        },
                        // Reconnected (and listening again) already: catch up by renewing.
                        Ok(None) => {
                            tracing::warn!("the cancel listener lost its connection; reconnected");
                            leases.renew_now.notify_one();
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "the cancel listener failed; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, retry_in = ?retry, "cannot listen for cancels"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(retry) => {}
        }
        retry = (retry * 2).min(Duration::from_secs(5));
    }
}
