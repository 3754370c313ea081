//! Configuration from environment variables (12-factor). Every variable has a development default
//! matching `scripts/dev`, so a bare `gpuq-api` or `gpuq-worker` runs against the dev stack.

use std::str::FromStr;
use std::time::Duration;

/// Settings both binaries need: where Postgres, RabbitMQ and S3 are, and the job lifecycle timings.
/// Its `Debug` hides the passwords in the URLs, so logging it leaks no secret.
#[derive(Clone)]
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
    pub limits: Limits,
}

/// When a job sent back to the queue may run again: `base · 2^(attempt−1)`, capped at `max`,
/// times a random factor in [0.5, 1) so a burst of failures does not come back in lockstep.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

/// Caps on what one job may ask for, set by the deployment.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Rows of an input (training or inference).
    pub max_rows: usize,
    /// Feature columns of an input.
    pub max_features: usize,
    /// Training epochs (logreg, mlp) and iterations (kmeans).
    pub max_epochs: u64,
    /// Numbers in an inline input (`input.rows`).
    pub max_inline_values: usize,
    /// The largest `timeout_s` a job may ask for.
    pub max_timeout_s: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_rows: 10_000_000,
            max_features: 65_536,
            max_epochs: 100_000,
            max_inline_values: 1_000_000,
            max_timeout_s: 7 * 24 * 3600,
        }
    }
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
    /// How long a job sent back to the queue waits before it runs again.
    pub backoff: Backoff,
    /// `timeout_s` of a job that does not set one.
    pub default_timeout_s: u32,
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
                backoff: Backoff {
                    base: Duration::from_secs_f64(parse_var("GPUQ_RETRY_BASE_SECONDS", 2.0)?),
                    max: Duration::from_secs_f64(parse_var("GPUQ_RETRY_MAX_SECONDS", 300.0)?),
                },
                default_timeout_s: parse_var("GPUQ_JOB_TIMEOUT_SECONDS", 3600)?,
            },
            limits: {
                let d = Limits::default();
                Limits {
                    max_rows: parse_var("GPUQ_MAX_ROWS", d.max_rows)?,
                    max_features: parse_var("GPUQ_MAX_FEATURES", d.max_features)?,
                    max_epochs: parse_var("GPUQ_MAX_EPOCHS", d.max_epochs)?,
                    max_inline_values: parse_var("GPUQ_MAX_INLINE_VALUES", d.max_inline_values)?,
                    max_timeout_s: parse_var("GPUQ_MAX_TIMEOUT_SECONDS", d.max_timeout_s)?,
                }
            },
        })
    }

    /// The prefix (ending in `/`) of the tenant's objects in the deployment's bucket: its
    /// inputs by default, and everything gpuq writes for it.
    pub fn tenant_prefix(&self, tenant: &str) -> String {
        self.object_key(&format!("tenants/{tenant}/"))
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

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("database_url", &redact_url(&self.database_url))
            .field("amqp_url", &redact_url(&self.amqp_url))
            .field("queue", &self.queue)
            .field("bucket", &self.bucket)
            .field("s3_prefix", &self.s3_prefix)
            .field("lifecycle", &self.lifecycle)
            .field("limits", &self.limits)
            .finish()
    }
}

/// `scheme://user:secret@host/…` → `scheme://user:***@host/…`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_passwords_and_keep_the_rest() {
        assert_eq!(
            redact_url("postgres://gpuq:s3cr3t@db:5432/gpuq"),
            "postgres://gpuq:***@db:5432/gpuq"
        );
        assert_eq!(
            redact_url("amqp://guest:p@ss@mq:5672/%2f"),
            "amqp://guest:***@mq:5672/%2f"
        );
        assert_eq!(redact_url("postgres://db/gpuq"), "postgres://db/gpuq");
    }
}
