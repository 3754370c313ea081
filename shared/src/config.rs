//! Configuration from environment variables (12-factor). Every variable has a development default
//! matching `scripts/dev`, so a bare `gpuq-api` or `gpuq-worker` runs against the dev stack.

use std::str::FromStr;
use std::time::Duration;

/// Settings both binaries need: where Postgres, RabbitMQ and S3 are, and the job lifecycle timings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: String,
    pub amqp_url: String,
    /// Durable queue the jobs are published to.
    pub queue: String,
    /// Bucket that outputs and model artifacts are written to.
    pub bucket: String,
    /// Key prefix (may be empty) under which outputs and artifacts are written.
    pub s3_prefix: String,
    pub lifecycle: Lifecycle,
}

/// Timings and limits of the job lifecycle (design.md, "Job lifecycle").
#[derive(Debug, Clone)]
pub struct Lifecycle {
    /// How long a claim holds without renewal; renewed every third of it.
    pub lease: Duration,
    /// A `queued` job whose message went out this long ago (or never) is published again.
    pub republish_after: Duration,
    /// How often the reaper looks for expired leases and unpublished jobs.
    pub reaper_interval: Duration,
    /// Attempts a job gets before a retryable failure becomes final.
    pub max_attempts: i32,
}

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            database_url: var_or("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gpuq"),
            amqp_url: var_or("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            queue: var_or("GPUQ_QUEUE", "gpuq.jobs"),
            bucket: var_or("GPUQ_BUCKET", "gpuq-dev"),
            s3_prefix: var_or("GPUQ_S3_PREFIX", ""),
            lifecycle: Lifecycle {
                lease: Duration::from_secs_f64(parse_var("GPUQ_LEASE_SECONDS", 30.0)?),
                republish_after: Duration::from_secs_f64(parse_var(
                    "GPUQ_REPUBLISH_AFTER_SECONDS",
                    30.0,
                )?),
                reaper_interval: Duration::from_secs_f64(parse_var(
                    "GPUQ_REAPER_INTERVAL_SECONDS",
                    5.0,
                )?),
                max_attempts: parse_var("GPUQ_MAX_ATTEMPTS", 3)?,
            },
        })
    }

    /// The key for an object gpuq writes, under the configured prefix.
    pub fn object_key(&self, suffix: &str) -> String {
        let prefix = self.s3_prefix.trim_end_matches('/');
        if prefix.is_empty() {
            suffix.to_string()
        } else {
            format!("{prefix}/{suffix}")
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}: cannot parse `{value}`")]
pub struct ConfigError {
    pub name: String,
    pub value: String,
}

pub fn var_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// Reads and parses a variable, falling back to `default` when it is unset or empty.
pub fn parse_var<T: FromStr>(name: &str, default: T) -> Result<T, ConfigError> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v.parse().map_err(|_| ConfigError {
            name: name.into(),
            value: v,
        }),
        _ => Ok(default),
    }
}
