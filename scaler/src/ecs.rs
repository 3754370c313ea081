//! The `ecs` backend: the worker pool is an ECS service; its `desiredCount` is the pool size.
//!
//! ECS picks which tasks stop on scale-in; a worker holding a job has task scale-in protection
//! (worker/src/presence.rs), so ECS stops only idle ones. The SDK retries throttling and
//! transient errors itself (standard mode, 5 attempts); the scaler's loop backs off on top.

use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use aws_sdk_ecs::config::retry::RetryConfig;
use std::time::{Duration, Instant};

pub struct EcsService {
    ecs: aws_sdk_ecs::Client,
    cluster: String,
    service: String,
    /// Publishes `BacklogPerWorker` here when set.
    metrics: Option<(aws_sdk_cloudwatch::Client, String)>,
    /// When the metric last went out: once a minute is CloudWatch's standard resolution, and
    /// every PutMetricData is billed.
    last_published: Option<Instant>,
}

const METRIC_PERIOD: Duration = Duration::from_secs(60);

/// The service as ECS reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceCounts {
    pub desired: u32,
    pub running: u32,
    pub pending: u32,
}

impl EcsService {
    /// Clients from the standard AWS environment (region, credentials, `AWS_ENDPOINT_URL`).
    pub async fn new(cluster: String, service: String, metrics_namespace: Option<String>) -> Self {
        let config = aws_config::from_env()
            .retry_config(RetryConfig::standard().with_max_attempts(5))
            .load()
            .await;
        let metrics = metrics_namespace.map(|ns| (aws_sdk_cloudwatch::Client::new(&config), ns));
        Self {
            ecs: aws_sdk_ecs::Client::new(&config),
            cluster,
            service,
            metrics,
            last_published: None,
        }
    }

    pub async fn counts(&self) -> anyhow::Result<ServiceCounts> {
        let out = self
            .ecs
            .describe_services()
            .cluster(&self.cluster)
            .services(&self.service)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("DescribeServices: {}", error_text(&e)))?;
        if let Some(failure) = out.failures().first() {
            anyhow::bail!(
                "DescribeServices: {} {}: {}",
                self.cluster,
                self.service,
                failure.reason().unwrap_or("failed")
            );
        }
        let Some(s) = out.services().first() else {
            anyhow::bail!(
                "DescribeServices: no service {} in {}",
                self.service,
                self.cluster
            );
        };
        Ok(ServiceCounts {
            desired: s.desired_count().max(0) as u32,
            running: s.running_count().max(0) as u32,
            pending: s.pending_count().max(0) as u32,
        })
    }

    pub async fn set_desired(&self, desired: u32) -> anyhow::Result<()> {
        self.ecs
            .update_service()
            .cluster(&self.cluster)
            .service(&self.service)
            .desired_count(desired as i32)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("UpdateService: {}", error_text(&e)))?;
        Ok(())
    }

    /// `BacklogPerWorker` = (queued + running) / running tasks (the backlog itself when none
    /// runs), for users who prefer ECS target tracking on it to this scaler's own decisions.
    /// At most once per minute.
    pub async fn publish_backlog(
        &mut self,
        backlog: u64,
        running_tasks: u32,
    ) -> anyhow::Result<()> {
        let Some((cloudwatch, namespace)) = &self.metrics else {
            return Ok(());
        };
        if self
            .last_published
            .is_some_and(|at| at.elapsed() < METRIC_PERIOD)
        {
            return Ok(());
        }
        let value = backlog as f64 / running_tasks.max(1) as f64;
        let dimension =
            |name: &str, value: &str| Dimension::builder().name(name).value(value).build();
        let datum = MetricDatum::builder()
            .metric_name("BacklogPerWorker")
            .dimensions(dimension("ClusterName", &self.cluster))
            .dimensions(dimension("ServiceName", &self.service))
            .unit(StandardUnit::Count)
            .value(value)
            .build();
        cloudwatch
            .put_metric_data()
            .namespace(namespace)
            .metric_data(datum)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("PutMetricData: {}", error_text(&e)))?;
        self.last_published = Some(Instant::now());
        Ok(())
    }
}

/// The service error's code and message where there is one, not just "service error".
fn error_text<E, R>(e: &aws_sdk_ecs::error::SdkError<E, R>) -> String
where
    E: aws_sdk_ecs::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_ecs::error::DisplayErrorContext;
    match e.as_service_error() {
        Some(service) => format!(
            "{}: {}",
            service.code().unwrap_or("error"),
            service.message().unwrap_or("")
        ),
        None => DisplayErrorContext(e).to_string(),
    }
}
