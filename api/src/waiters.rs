//! Lets a request wait for a job to finish (`Prefer: wait=N` on submit, `?wait=N` on get)
//! without polling: the jobs table's trigger NOTIFYs `gpuq_job_finished`, one listener
//! connection fans the ids out, and each waiter re-reads its job when its id goes by.

use gpuq_shared::JobId;
use gpuq_shared::db::{self, JobRecord};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The longest a request may wait.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Waiters {
    finished: broadcast::Sender<Uuid>,
}

impl Waiters {
    /// Starts the listener task; it runs until `shutdown`.
    pub fn start(pool: PgPool, shutdown: CancellationToken) -> Self {
        let (finished, _) = broadcast::channel(4096);
        let tx = finished.clone();
        tokio::spawn(async move {
            loop {
                let listen = async {
                    let mut listener = PgListener::connect_with(&pool).await?;
                    listener.listen("gpuq_job_finished").await?;
                    loop {
                        let n = listener.recv().await?;
                        if let Ok(id) = Uuid::parse_str(n.payload()) {
                            let _ = tx.send(id);
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
        Self { finished }
    }

    /// Returns the job once it is terminal or `wait` has passed, whichever is first. Re-reads the
    /// job every second as well, so a lost notification costs at most a second.
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

    /// A receiver of finished job ids, to take before the state the caller then reads or writes.
    pub fn subscribe(&self) -> broadcast::Receiver<Uuid> {
        self.finished.subscribe()
    }

    /// As [`wait_for`](Self::wait_for) with a receiver taken earlier and a `known` state of the
    /// job read (or written) after it was taken, which saves the first read. The caller has
    /// checked that the job is the tenant's.
    pub async fn wait_with(
        &self,
        pool: &PgPool,
        id: JobId,
        wait: Duration,
        mut rx: broadcast::Receiver<Uuid>,
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
            let recheck = tokio::time::Instant::now() + Duration::from_secs(1);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => return Ok(job),
                    _ = tokio::time::sleep_until(recheck) => break,
                    got = rx.recv() => match got {
                        Ok(done) if done == id.0 => break,
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
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
