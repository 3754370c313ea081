//! Group commit at intake. Concurrent `POST /v1/jobs` requests hand their jobs to one intake
//! task, which records whatever has gathered in one transaction — one multi-row `INSERT` of the
//! jobs and one of their idempotency keys, one commit, one fsync — and publishes their messages
//! with pipelined confirms. Nothing waits on a timer: a group is what arrived while the previous groups were in flight,
//! so a lone request goes at once and a burst shares its round trips. Each request answers only
//! once its job is durable and published (or, if the broker failed, left to the reaper).

use crate::error::ApiError;
use gpuq_shared::JobId;
use gpuq_shared::db::{self, DbError, Idempotent, Key, NewJob};
use gpuq_shared::queue::{JobMessage, Publisher};
use sqlx::PgPool;
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Jobs one group may hold.
const MAX_GROUP: usize = 512;
/// Groups recorded and published at once: while they wait on Postgres or the broker, the next
/// one gathers (more in flight would make more, smaller groups).
const GROUPS_IN_FLIGHT: usize = 2;

/// The handle requests submit through.
#[derive(Clone)]
pub struct Intake {
    to: mpsc::Sender<Pending>,
}

struct Pending {
    job: NewJob,
    key: Option<Key>,
    reply: oneshot::Sender<Result<Idempotent, Failed>>,
}

/// Why a group could not be recorded, for each of its requests.
#[derive(Debug, Clone)]
struct Failed {
    unavailable: bool,
    message: String,
}

impl From<&DbError> for Failed {
    fn from(e: &DbError) -> Self {
        Self {
            unavailable: db::is_unavailable(e),
            message: e.to_string(),
        }
    }
}

impl From<Failed> for ApiError {
    fn from(f: Failed) -> Self {
        if f.unavailable {
            ApiError::Unavailable(format!(
                "the database is unavailable ({}); try again",
                f.message
            ))
        } else {
            ApiError::Internal(anyhow::anyhow!("recording the job failed: {}", f.message))
        }
    }
}

impl Intake {
    /// Starts the intake task; it ends once every `Intake` handle is dropped.
    pub fn start(pool: PgPool, publisher: Arc<Publisher>) -> Self {
        let (to, from) = mpsc::channel(MAX_GROUP * GROUPS_IN_FLIGHT);
        tokio::spawn(gather(pool, publisher, from));
        Self { to }
    }

    /// Records and publishes `job` (once per `key`, when it has one) with whatever else is
    /// submitted meanwhile. The work goes on if the caller is dropped (its client hung up): no
    /// job is left recorded but unpublished.
    pub async fn submit(&self, job: NewJob, key: Option<Key>) -> Result<Idempotent, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.to
            .send(Pending { job, key, reply })
            .await
            .map_err(|_| ApiError::Unavailable("the API is shutting down".into()))?;
        answer
            .await
            .map_err(|_| ApiError::Internal(anyhow::anyhow!("the intake task ended")))?
            .map_err(ApiError::from)
    }
}

async fn gather(pool: PgPool, publisher: Arc<Publisher>, mut from: mpsc::Receiver<Pending>) {
    let in_flight = Arc::new(Semaphore::new(GROUPS_IN_FLIGHT));
    loop {
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let Some(first) = from.recv().await else {
            return;
        };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match from.try_recv() {
                Ok(p) => group.push(p),
                Err(_) => break,
            }
        }
        let (pool, publisher) = (pool.clone(), publisher.clone());
        tokio::spawn(async move {
            let _permit = permit;
            record_group(&pool, &publisher, group).await;
        });
    }
}

async fn record_group(pool: &PgPool, publisher: &Publisher, group: Vec<Pending>) {
    let (jobs, replies): (Vec<(NewJob, Option<Key>)>, Vec<_>) =
        group.into_iter().map(|p| ((p.job, p.key), p.reply)).unzip();
    let mut messages = Vec::new();
    let recorded: Vec<Result<Idempotent, Failed>> = match db::jobs_insert_keyed(pool, &jobs).await {
        Ok((answers, announce)) => {
            messages = announce;
            answers.into_iter().map(Ok).collect()
        }
        // A statement error that is not an outage may be one job's (its model was deleted a
        // moment ago, say): record each alone so the others are not refused with it.
        Err(e) if !db::is_unavailable(&e) && jobs.len() > 1 => {
            let mut one_by_one = Vec::with_capacity(jobs.len());
            for job in &jobs {
                one_by_one.push(
                    match db::jobs_insert_keyed(pool, std::slice::from_ref(job)).await {
                        Ok((mut answer, announce)) => {
                            messages.extend(announce);
                            Ok(answer.pop().expect("one answer"))
                        }
                        Err(e) => Err(Failed::from(&e)),
                    },
                );
            }
            one_by_one
        }
        Err(e) => jobs.iter().map(|_| Err(Failed::from(&e))).collect(),
    };
    publish_recorded(pool, publisher, &messages).await;
    for (reply, outcome) in replies.into_iter().zip(recorded) {
        let _ = reply.send(outcome);
    }
}

/// Publishes jobs just recorded (as published, see `db::jobs_insert_in`); if the broker fails,
/// marks them unpublished so the reaper publishes them within seconds. A duplicate message is
/// harmless.
pub async fn publish_recorded(pool: &PgPool, publisher: &Publisher, messages: &[JobMessage]) {
    if messages.is_empty() {
        return;
    }
    if let Err(e) = publisher.publish_batch(messages).await {
        let ids: Vec<JobId> = messages.iter().flat_map(|m| m.jobs()).copied().collect();
        tracing::warn!(jobs = ids.len(), error = %e, "publish failed; the reaper will publish the jobs");
        if let Err(e) = db::jobs_set_unpublished(pool, &ids).await {
            tracing::warn!(jobs = ids.len(), error = %e,
                "could not mark the jobs unpublished; the reaper's lost-message rule will publish them");
        }
    }
}
