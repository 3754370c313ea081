//! The AMQP side: one durable queue of job ids, publisher confirms, and a publisher that
//! reconnects by itself. Messages carry only job ids (one, or up to [`JOBS_PER_MESSAGE`] small
//! inference jobs recorded together); Postgres holds everything else.

use crate::domain::JobId;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::Mutex;

pub use lapin::Error as AmqpError;

/// Batchable jobs recorded together share a message of at most this many jobs.
pub const JOBS_PER_MESSAGE: usize = 64;

/// The body of a job message: on the wire `{"job_id": …}` for one job, `{"job_ids": […]}` for
/// jobs that share a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Wire", into = "Wire")]
pub enum JobMessage {
    /// One job, claimed and run on its own.
    Alone(JobId),
    /// Small inline inference jobs ([`crate::job::JobSpec::batchable`]) recorded together, which
    /// a worker runs in batches. Their rows carry the message's id (its first job's id) in
    /// `jobs.message_id`, so the reaper counts one message for all of them. The batching is a
    /// hint: the worker decides again from each job's row.
    Batch(Vec<JobId>),
}

impl JobMessage {
    /// The jobs the message announces.
    pub fn jobs(&self) -> &[JobId] {
        match self {
            Self::Alone(id) => std::slice::from_ref(id),
            Self::Batch(ids) => ids,
        }
    }

    /// The id recorded in `jobs.message_id` for the jobs of a shared message.
    pub fn shared_id(&self) -> Option<JobId> {
        match self {
            Self::Alone(_) => None,
            Self::Batch(ids) => ids.first().copied(),
        }
    }

    /// The messages announcing jobs recorded together, in order: batchable jobs (`true`) share
    /// messages of up to [`JOBS_PER_MESSAGE`], every other job has its own.
    pub fn announce(jobs: impl IntoIterator<Item = (JobId, bool)>) -> Vec<Self> {
        let (mut messages, mut shared) = (Vec::new(), Vec::new());
        for (id, batchable) in jobs {
            if !batchable {
                messages.push(Self::Alone(id));
                continue;
            }
            shared.push(id);
            if shared.len() == JOBS_PER_MESSAGE {
                messages.push(Self::Batch(std::mem::take(&mut shared)));
            }
        }
        if !shared.is_empty() {
            messages.push(Self::Batch(shared));
        }
        messages
    }

    /// The message less the jobs `gone` (recorded, then undone); `None` if none is left.
    pub fn without(self, gone: &[JobId]) -> Option<Self> {
        match self {
            Self::Alone(id) => (!gone.contains(&id)).then_some(Self::Alone(id)),
            Self::Batch(mut ids) => {
                ids.retain(|id| !gone.contains(id));
                (!ids.is_empty()).then_some(Self::Batch(ids))
            }
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    job_id: Option<JobId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    job_ids: Option<Vec<JobId>>,
    /// Written by earlier versions beside `job_id` for a batchable job.
    #[serde(default, skip_serializing)]
    batch: bool,
}

impl TryFrom<Wire> for JobMessage {
    type Error = &'static str;

    fn try_from(w: Wire) -> Result<Self, Self::Error> {
        match (w.job_id, w.job_ids) {
            (Some(id), None) if w.batch => Ok(Self::Batch(vec![id])),
            (Some(id), None) => Ok(Self::Alone(id)),
            (None, Some(ids)) if !ids.is_empty() => Ok(Self::Batch(ids)),
            _ => Err("a job message names `job_id` or a non-empty `job_ids`, not both"),
        }
    }
}

impl From<JobMessage> for Wire {
    fn from(m: JobMessage) -> Self {
        let (job_id, job_ids) = match m {
            JobMessage::Alone(id) => (Some(id), None),
            JobMessage::Batch(ids) => (None, Some(ids)),
        };
        Self {
            job_id,
            job_ids,
            batch: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("AMQP: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker did not confirm the message")]
    Nacked,
    #[error("the broker closed the consumer")]
    Closed,
    #[error("the broker did not answer within {0:?}")]
    Timeout(Duration),
}

const BROKER_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a connection to the broker.
pub async fn connect(url: &str) -> Result<Connection, QueueError> {
    let props = ConnectionProperties::default();
    Ok(with_timeout(Connection::connect(url, props)).await??)
}

/// The queue beside `queue` that shared messages of small inference jobs go to. A worker takes
/// `queue`'s messages only as fast as it has slots (its prefetch there is its concurrency), so a
/// message never waits unacked behind a long job, where the reaper, which counts only ready
/// messages, would take it for lost; it takes this one's with a large prefetch and runs them
/// at once.
pub fn batch_queue(queue: &str) -> String {
    format!("{queue}.batch")
}

/// Declares the topology on `channel`: the durable job queue and its batch queue.
pub async fn declare(channel: &Channel, queue: &str) -> Result<(), QueueError> {
    for name in [queue.to_string(), batch_queue(queue)] {
        channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

async fn with_timeout<F: Future>(f: F) -> Result<F::Output, QueueError> {
    tokio::time::timeout(BROKER_TIMEOUT, f)
        .await
        .map_err(|_| QueueError::Timeout(BROKER_TIMEOUT))
}

/// Publishes job ids with publisher confirms, over a connection it re-opens when it is lost.
pub struct Publisher {
    url: String,
    queue: String,
    batch_queue: String,
    link: Mutex<Option<(Connection, Channel)>>,
}

impl Publisher {
    /// Connects and declares the queue; fails if the broker is unreachable.
    pub async fn connect(url: &str, queue: &str) -> Result<Self, QueueError> {
        let publisher = Self::lazy(url, queue);
        publisher.channel().await?;
        Ok(publisher)
    }

    /// A publisher that connects on first use, so a process can start while the broker is down.
    pub fn lazy(url: &str, queue: &str) -> Self {
        Self {
            url: url.to_string(),
            queue: queue.to_string(),
            batch_queue: batch_queue(queue),
            link: Mutex::new(None),
        }
    }

    async fn channel(&self) -> Result<Channel, QueueError> {
        let mut link = self.link.lock().await;
        if let Some((conn, channel)) = link.as_ref()
            && conn.status().connected()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        *link = None;
        let conn = connect(&self.url).await?;
        let channel = with_timeout(conn.create_channel()).await??;
        with_timeout(channel.confirm_select(ConfirmSelectOptions::default())).await??;
        with_timeout(declare(&channel, &self.queue)).await??;
        *link = Some((conn, channel.clone()));
        Ok(channel)
    }

    /// Whether the link to the broker is up (or can be brought up now).
    pub async fn is_ready(&self) -> bool {
        self.channel().await.is_ok()
    }

    /// Publishes one persistent job message and waits for the broker's confirmation. Retries
    /// once on a fresh connection if the current one turns out to be dead.
    pub async fn publish(&self, job_id: JobId) -> Result<(), QueueError> {
        let message = [JobMessage::Alone(job_id)];
        match self.publish_batch_once(&message).await {
            Ok(()) => Ok(()),
            Err(first) => {
                tracing::warn!(error = %first, "publish failed; reconnecting once");
                *self.link.lock().await = None;
                self.publish_batch_once(&message).await
            }
        }
    }

    /// Publishes many job messages at once: every message goes out before the first
    /// confirmation is awaited, so a backlog of thousands takes a few round trips, not one per
    /// job. `Ok` once the broker has confirmed them all; on any error some may have gone out
    /// (a duplicate is harmless) and the link is dropped, so the next call starts afresh.
    pub async fn publish_batch(&self, messages: &[JobMessage]) -> Result<(), QueueError> {
        let result = self.publish_batch_once(messages).await;
        if result.is_err() {
            *self.link.lock().await = None;
        }
        result
    }

    async fn publish_batch_once(&self, messages: &[JobMessage]) -> Result<(), QueueError> {
        if messages.is_empty() {
            return Ok(());
        }
        let channel = self.channel().await?;
        let mut confirms = Vec::with_capacity(messages.len());
        for message in messages {
            let body = serde_json::to_vec(message).expect("serialisable");
            let to = match message {
                JobMessage::Alone(_) => &self.queue,
                JobMessage::Batch(_) => &self.batch_queue,
            };
            let confirm = with_timeout(channel.basic_publish(
                "".into(),
                to.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                message_properties(),
            ))
            .await??;
            confirms.push(confirm);
        }
        for confirm in confirms {
            if !with_timeout(confirm).await??.is_ack() {
                return Err(QueueError::Nacked);
            }
        }
        Ok(())
    }

    /// The messages ready for delivery in the job queue and its batch queue (a declare of each,
    /// which is idempotent and recreates a deleted queue). Messages delivered to a consumer and
    /// not yet acked are not counted.
    pub async fn ready_messages(&self) -> Result<u32, QueueError> {
        let channel = self.channel().await?;
        let mut ready = 0;
        for name in [&self.queue, &self.batch_queue] {
            let queue = with_timeout(channel.queue_declare(
                name.as_str().into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            ))
            .await??;
            ready += queue.message_count();
        }
        Ok(ready)
    }
}

/// A job message is persistent JSON.
fn message_properties() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> JobId {
        JobId(uuid::Uuid::from_u128(n))
    }

    #[test]
    fn messages_read_back_as_written_and_the_old_hinted_form_is_a_batch_of_one() {
        for m in [
            JobMessage::Alone(id(1)),
            JobMessage::Batch(vec![id(1), id(2)]),
        ] {
            let wire = serde_json::to_string(&m).unwrap();
            assert_eq!(
                serde_json::from_str::<JobMessage>(&wire).unwrap(),
                m,
                "{wire}"
            );
        }
        let old = format!(r#"{{"job_id": "{}", "batch": true}}"#, id(7).0);
        assert_eq!(
            serde_json::from_str::<JobMessage>(&old).unwrap(),
            JobMessage::Batch(vec![id(7)])
        );
        for bad in [
            "{}".to_string(),
            r#"{"job_ids": []}"#.to_string(),
            format!(r#"{{"job_id": "{0}", "job_ids": ["{0}"]}}"#, id(1).0),
            format!(r#"{{"job_id": "{}", "priority": 1}}"#, id(1).0),
        ] {
            assert!(serde_json::from_str::<JobMessage>(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn batchable_jobs_share_messages_of_at_most_jobs_per_message_in_order() {
        let jobs = (0..150).map(|n| (id(n), n % 50 != 0));
        let messages = JobMessage::announce(jobs);
        let alone: Vec<_> = messages
            .iter()
            .filter(|m| matches!(m, JobMessage::Alone(_)))
            .collect();
        assert_eq!(alone.len(), 3);
        let shared: Vec<usize> = messages
            .iter()
            .filter_map(|m| match m {
                JobMessage::Batch(ids) => Some(ids.len()),
                JobMessage::Alone(_) => None,
            })
            .collect();
        assert_eq!(shared, vec![64, 64, 19]);
        let first_shared = messages.iter().find_map(JobMessage::shared_id);
        assert_eq!(
            first_shared,
            Some(id(1)),
            "a shared message's id is its first job's"
        );
        let all: Vec<JobId> = messages.iter().flat_map(|m| m.jobs().to_vec()).collect();
        assert_eq!(all.len(), 150);
        assert_eq!(
            JobMessage::Batch(vec![id(1), id(2)]).without(&[id(1)]),
            Some(JobMessage::Batch(vec![id(2)]))
        );
        assert_eq!(JobMessage::Alone(id(1)).without(&[id(1)]), None);
    }
}
