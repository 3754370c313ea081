//! Lets a request wait for a job to finish (`Prefer: wait=N` on submit, `?wait=N` on get)
//! without polling: the jobs table's trigger NOTIFYs `gpuq_job_finished`, one listener
//! connection fans the ids out, and each waiter re-reads its job only when its id goes by — or
//! when notifications may have been missed (the listener reconnected, or the waiter fell
//! behind). Each tenant may have only so many requests waiting at once.

use gpuq_shared::JobId;
use gpuq_shared::db::{self, JobRecord};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The longest a request may wait.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

const CHANNEL: &str = "gpuq_job_finished";

/// What the listener tells every waiter.
#[derive(Debug, Clone, Copy)]
pub enum Wake {
    /// This job reached a terminal state.
    Finished(Uuid),
    /// Notifications may have been lost (the listener (re)connected): everyone looks again.
    Resync,
}

#[derive(Clone)]
pub struct Waiters {
    wakes: broadcast::Sender<Wake>,
    /// Requests waiting now, per tenant.
    waiting: Arc<Mutex<HashMap<String, usize>>>,
    max_per_tenant: usize,
}

/// The tenant already has as many requests waiting as it may.
#[derive(Debug)]
pub struct TooManyWaiters(pub usize);

/// A place among the tenant's waiters, given back when dropped (also when the client hangs
/// up and its request is dropped).
#[derive(Debug)]
pub struct WaiterSlot {
    waiting: Arc<Mutex<HashMap<String, usize>>>,
    tenant: String,
}

impl Drop for WaiterSlot {
    fn drop(&mut self) {
        let mut waiting = self.waiting.lock().expect("waiters lock");
        if let Some(n) = waiting.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                waiting.remove(&self.tenant);
            }
        }
    }
}

impl Waiters {
    /// Starts the listener task; it runs until `shutdown`.
    pub fn start(pool: PgPool, max_per_tenant: usize, shutdown: CancellationToken) -> Self {
        let waiters = Self::new(max_per_tenant);
        let tx = waiters.wakes.clone();
        tokio::spawn(async move {
            loop {
                let listen = async {
                    let mut listener = PgListener::connect_with(&pool).await?;
                    listener.listen(CHANNEL).await?;
                    // Whatever finished while nobody listened is found by a fresh look.
                    let _ = tx.send(Wake::Resync);
                    loop {
                        match listener.try_recv().await? {
                            Some(n) => {
                                if let Ok(id) = Uuid::parse_str(n.payload()) {
                                    let _ = tx.send(Wake::Finished(id));
                                }
                            }
                            None => {
                                tracing::warn!("job notification listener reconnected");
                                let _ = tx.send(Wake::Resync);
                            }
                        }
                    }
                    #[allow(unreachable_code)]
                    Ok::<(), sqlx::Error>(())
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = listen => if let Err(e) = r {
                        tracing::warn!(error = %e, "job notification listener lost; reconnecting");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        waiters
    }

    fn new(max_per_tenant: usize) -> Self {
        Self {
            wakes: broadcast::channel(4096).0,
            waiting: Arc::default(),
            max_per_tenant,
        }
    }

    /// A place among `tenant`'s waiters, if it has one left.
    pub fn admit(&self, tenant: &str) -> Result<WaiterSlot, TooManyWaiters> {
        let mut waiting = self.waiting.lock().expect("waiters lock");
        if waiting.get(tenant).copied().unwrap_or(0) >= self.max_per_tenant {
            return Err(TooManyWaiters(self.max_per_tenant));
        }
        *waiting.entry(tenant.to_string()).or_default() += 1;
        Ok(WaiterSlot {
            waiting: self.waiting.clone(),
            tenant: tenant.to_string(),
        })
    }

    /// Returns the job once it is terminal or `wait` has passed, whichever is first.
    pub async fn wait_for(
        &self,
        pool: &PgPool,
        tenant: &str,
        id: JobId,
        wait: Duration,
    ) -> Result<Option<JobRecord>, db::DbError> {
        let rx = self.subscribe();
        let first = db::job_get_for(pool, tenant, id).await?;
        if first.is_none() {
            return Ok(None);
        }
        self.wait_with(pool, id, wait, rx, first).await
    }

    /// A receiver of wake-ups, to take before the state the caller then reads or writes.
    pub fn subscribe(&self) -> broadcast::Receiver<Wake> {
        self.wakes.subscribe()
    }

    /// As [`wait_for`](Self::wait_for) with a receiver taken earlier and a `known` state of the
    /// job read (or written) after it was taken, which saves the first read. The caller has
    /// checked that the job is the tenant's.
    pub async fn wait_with(
        &self,
        pool: &PgPool,
        id: JobId,
        wait: Duration,
        mut rx: broadcast::Receiver<Wake>,
        mut known: Option<JobRecord>,
    ) -> Result<Option<JobRecord>, db::DbError> {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        loop {
            let job = match known.take() {
                Some(j) => Some(j),
                None => db::job_get(pool, id).await?,
            };
            match &job {
                Some(j) if !j.status.is_terminal() => {}
                _ => return Ok(job),
            }
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => return Ok(job),
                    got = rx.recv() => match got {
                        Ok(Wake::Finished(done)) if done == id.0 => break,
                        Ok(Wake::Finished(_)) => continue,
                        Ok(Wake::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return Ok(job),
                    },
                }
            }
        }
    }
}

/// Parses a wait duration in seconds (`5`, `2.5`), capped at [`MAX_WAIT`].
pub fn parse_wait(s: &str) -> Option<Duration> {
    let secs: f64 = s.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs).min(MAX_WAIT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tenant_gets_so_many_slots_and_a_dropped_one_comes_back() {
        let waiters = Waiters::new(2);
        let a1 = waiters.admit("a").unwrap();
        let _a2 = waiters.admit("a").unwrap();
        assert_eq!(waiters.admit("a").unwrap_err().0, 2);
        let _b = waiters.admit("b").expect("tenants have their own slots");
        drop(a1);
        let _a3 = waiters.admit("a").expect("a dropped slot is free again");
        drop((_a2, _a3));
        assert!(!waiters.waiting.lock().unwrap().contains_key("a"));
    }
}
