//! The AMQP side: one durable queue of job ids, publisher confirms, and a publisher that
//! reconnects by itself. Messages carry only the job id; Postgres holds everything else.

use crate::domain::JobId;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::Mutex;

pub use lapin::Error as AmqpError;

/// The body of a job message.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct JobMessage {
    pub job_id: JobId,
    /// A hint from the API that the job is small inline inference, which a worker claims and
    /// runs in batches with others ([`crate::job::JobSpec::batchable`]). Only a hint: the worker
    /// decides again from the claimed row, and a message without it (the reaper's) runs alone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub batch: bool,
}

impl JobMessage {
    /// A message with no hint: the job runs on its own.
    pub fn alone(job_id: JobId) -> Self {
        Self {
            job_id,
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

/// Declares the topology on `channel`: the durable job queue.
pub async fn declare(channel: &Channel, queue: &str) -> Result<(), QueueError> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await?;
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
        let message = [JobMessage::alone(job_id)];
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
            let confirm = with_timeout(channel.basic_publish(
                "".into(),
                self.queue.as_str().into(),
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

    /// The messages ready for delivery in the job queue (a declare of it, which is idempotent
    /// and recreates a deleted queue). Messages delivered to a consumer and not yet acked are
    /// not counted.
    pub async fn ready_messages(&self) -> Result<u32, QueueError> {
        let channel = self.channel().await?;
        let queue = with_timeout(channel.queue_declare(
            self.queue.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        ))
        .await??;
        Ok(queue.message_count())
    }
}

/// A job message is persistent JSON.
fn message_properties() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
}
