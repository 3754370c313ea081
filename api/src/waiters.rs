//! Lets a request wait for its jobs to finish (`Prefer: wait=N` on submit and batch, `?wait=N`
//! on get) without polling. The jobs table's statement trigger NOTIFYs `gpuq_job_finished` with
//! the ids a statement finished; one listener connection per API process finds who watches each
//! id (a map lookup per id, whatever the number of waiters), reads the watched ones in one query
//! per notification and hands each request its finished jobs. A request re-reads for itself only
//! when notifications may have been missed (the listener reconnected) or the shared read failed.
//! Each tenant may have only so many requests waiting.

use gpuq_shared::JobId;
use gpuq_shared::db::{self, JobRecord};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The longest a request may wait.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

const CHANNEL: &str = "gpuq_job_finished";

#[derive(Clone)]
pub struct Waiters {
    inner: Arc<Inner>,
    max_per_tenant: usize,
}

struct Inner {
    /// Who watches each job.
    watching: Mutex<HashMap<Uuid, Vec<Arc<Signal>>>>,
    /// Bumped when notifications may have been lost: every watch looks again.
    resync: watch::Sender<u64>,
    /// Requests waiting now, per tenant.
    waiting: Mutex<HashMap<String, usize>>,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            watching: Mutex::default(),
            resync: watch::channel(0).0,
            waiting: Mutex::default(),
        }
    }
}

/// One request's mailbox: what it was told about its jobs, and a wake-up.
#[derive(Default)]
struct Signal {
    finished: Mutex<Vec<Told>>,
    notify: Notify,
}

/// A watched job finished: here it is as read after the notification, or only its id (the
/// watcher reads it).
enum Told {
    Job(Box<JobRecord>),
    Id(JobId),
}

/// The tenant already has as many requests waiting as it may.
#[derive(Debug)]
pub struct TooManyWaiters(pub usize);

/// A place among the tenant's waiters, given back when dropped (also when the client hangs
/// up and its request is dropped).
pub struct WaiterSlot {
    inner: Arc<Inner>,
    tenant: String,
}

impl std::fmt::Debug for WaiterSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaiterSlot")
            .field("tenant", &self.tenant)
            .finish()
    }
}

impl Drop for WaiterSlot {
    fn drop(&mut self) {
        let mut waiting = self.inner.waiting.lock().expect("waiters lock");
        if let Some(n) = waiting.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                waiting.remove(&self.tenant);
            }
        }
    }
}

/// A request's watch over some jobs, taken before it reads or writes them so that their
/// finishing cannot be missed; unregistered when dropped.
pub struct Watch {
    inner: Arc<Inner>,
    ids: Vec<Uuid>,
    signal: Arc<Signal>,
    resync: watch::Receiver<u64>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut watching = self.inner.watching.lock().expect("waiters lock");
        for id in &self.ids {
            if let Some(list) = watching.get_mut(id) {
                list.retain(|s| !Arc::ptr_eq(s, &self.signal));
                if list.is_empty() {
                    watching.remove(id);
                }
            }
        }
    }
}

impl Waiters {
    /// Starts the listener task; it runs until `shutdown`.
    pub fn start(pool: PgPool, max_per_tenant: usize, shutdown: CancellationToken) -> Self {
        let waiters = Self::new(max_per_tenant);
        let inner = waiters.inner.clone();
        tokio::spawn(async move {
            loop {
                let listen = async {
                    let mut listener = PgListener::connect_with(&pool).await?;
                    listener.listen(CHANNEL).await?;
                    // Whatever finished while nobody listened is found by a fresh look.
                    inner.resync.send_modify(|g| *g += 1);
                    loop {
                        match listener.try_recv().await? {
                            Some(n) => inner.finished(&pool, n.payload()),
                            None => {
                                tracing::warn!("job notification listener reconnected");
                                inner.resync.send_modify(|g| *g += 1);
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
            inner: Arc::default(),
            max_per_tenant,
        }
    }

    /// A place among `tenant`'s waiters, if it has one left.
    pub fn admit(&self, tenant: &str) -> Result<WaiterSlot, TooManyWaiters> {
        let mut waiting = self.inner.waiting.lock().expect("waiters lock");
        if waiting.get(tenant).copied().unwrap_or(0) >= self.max_per_tenant {
            return Err(TooManyWaiters(self.max_per_tenant));
        }
        *waiting.entry(tenant.to_string()).or_default() += 1;
        Ok(WaiterSlot {
            inner: self.inner.clone(),
            tenant: tenant.to_string(),
        })
    }

    /// Starts watching `ids` (which need not exist yet).
    pub fn watch(&self, ids: &[JobId]) -> Watch {
        let signal = Arc::new(Signal::default());
        let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
        let mut watching = self.inner.watching.lock().expect("waiters lock");
        for id in &ids {
            watching.entry(*id).or_default().push(signal.clone());
        }
        drop(watching);
        Watch {
            inner: self.inner.clone(),
            ids,
            signal,
            resync: self.inner.resync.subscribe(),
        }
    }

    /// The tenant's job once it is terminal or `wait` has passed, whichever is first; `None`
    /// if the tenant has no such job.
    pub async fn wait_for(
        &self,
        pool: &PgPool,
        tenant: &str,
        id: JobId,
        wait: Duration,
    ) -> Result<Option<JobRecord>, db::DbError> {
        let watch = self.watch(&[id]);
        let Some(first) = db::job_get_for(pool, tenant, id).await? else {
            return Ok(None);
        };
        Ok(watch.wait(pool, wait, vec![first]).await?.pop())
    }
}

impl Inner {
    /// A notification's ids (comma-separated): the watched ones are read in one query, off the
    /// listener's task, and handed to whoever watches them.
    fn finished(self: &Arc<Self>, pool: &PgPool, payload: &str) {
        let watched: Vec<JobId> = {
            let watching = self.watching.lock().expect("waiters lock");
            payload
                .split(',')
                .filter_map(|s| Uuid::parse_str(s.trim()).ok())
                .filter(|id| watching.contains_key(id))
                .map(JobId)
                .collect()
        };
        if watched.is_empty() {
            return;
        }
        let (inner, pool) = (self.clone(), pool.clone());
        tokio::spawn(async move {
            let read = db::jobs_get(&pool, &watched).await.unwrap_or_default();
            let mut told: HashMap<JobId, Told> =
                watched.iter().map(|id| (*id, Told::Id(*id))).collect();
            for job in read {
                told.insert(job.id, Told::Job(Box::new(job)));
            }
            inner.tell(told);
        });
    }

    fn tell(&self, told: HashMap<JobId, Told>) {
        let watching = self.watching.lock().expect("waiters lock");
        for (id, what) in told {
            for signal in watching.get(&id.0).into_iter().flatten() {
                let copy = match &what {
                    Told::Job(job) => Told::Job(job.clone()),
                    Told::Id(id) => Told::Id(*id),
                };
                signal.finished.lock().expect("signal lock").push(copy);
                signal.notify.notify_one();
            }
        }
    }
}

impl Watch {
    /// The watched jobs, given as `known` (read or written after the watch was taken), once
    /// all are terminal or `wait` has passed: re-read only when told they finished. A job
    /// that disappears meanwhile (deleted) keeps its last known state.
    pub async fn wait(
        mut self,
        pool: &PgPool,
        wait: Duration,
        known: Vec<JobRecord>,
    ) -> Result<Vec<JobRecord>, db::DbError> {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        let order: Vec<JobId> = known.iter().map(|j| j.id).collect();
        let mut jobs: HashMap<JobId, JobRecord> = known.into_iter().map(|j| (j.id, j)).collect();
        loop {
            let pending: Vec<JobId> = order
                .iter()
                .filter(|id| !jobs[id].status.is_terminal())
                .copied()
                .collect();
            if pending.is_empty() {
                break;
            }
            let reread: Vec<JobId> = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = self.signal.notify.notified() => {
                    let told = std::mem::take(&mut *self.signal.finished.lock().expect("signal lock"));
                    let mut reread = Vec::new();
                    for t in told {
                        match t {
                            Told::Job(job) => {
                                jobs.insert(job.id, *job);
                            }
                            Told::Id(id) if pending.contains(&id) => reread.push(id),
                            Told::Id(_) => {}
                        }
                    }
                    reread
                }
                changed = self.resync.changed() => match changed {
                    Ok(()) => pending,
                    Err(_) => break,
                },
            };
            if reread.is_empty() {
                continue;
            }
            let fresh = if let [one] = reread[..] {
                db::job_get(pool, one).await?.into_iter().collect()
            } else {
                db::jobs_get(pool, &reread).await?
            };
            for job in fresh {
                jobs.insert(job.id, job);
            }
        }
        Ok(order.iter().filter_map(|id| jobs.remove(id)).collect())
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
        assert!(!waiters.inner.waiting.lock().unwrap().contains_key("a"));
    }

    #[tokio::test]
    async fn a_finished_job_reaches_exactly_the_watches_of_its_id_and_a_dropped_watch_leaves() {
        let waiters = Waiters::new(10);
        let (a, b, c) = (JobId::new(), JobId::new(), JobId::new());
        let wa = waiters.watch(&[a, b]);
        let wc = waiters.watch(&[c]);
        let told = [a, b].into_iter().map(|id| (id, Told::Id(id))).collect();
        waiters.inner.tell(told);
        let mut got: Vec<Uuid> = wa
            .signal
            .finished
            .lock()
            .unwrap()
            .iter()
            .map(|t| match t {
                Told::Id(id) => id.0,
                Told::Job(j) => j.id.0,
            })
            .collect();
        got.sort();
        let mut want = vec![a.0, b.0];
        want.sort();
        assert_eq!(got, want);
        assert!(wc.signal.finished.lock().unwrap().is_empty());
        // The wake-up was stored: a wait that starts later still sees it.
        tokio::time::timeout(Duration::from_secs(1), wa.signal.notify.notified())
            .await
            .expect("notified");
        drop(wa);
        assert_eq!(
            waiters.inner.watching.lock().unwrap().len(),
            1,
            "only c is watched"
        );
        drop(wc);
        assert!(waiters.inner.watching.lock().unwrap().is_empty());
    }
}
