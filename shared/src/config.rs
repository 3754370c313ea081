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
    /// Cells (rows × columns) of an input, inline or read from S3.
    pub max_cells: usize,
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
            // 1 GB of f32: rows and features are capped apart, never their product.
            max_cells: 250_000_000,
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
            database_url: database_url(),
            amqp_url: amqp_url(),
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
                    max_cells: parse_var("GPUQ_MAX_CELLS", d.max_cells)?,
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

/// `DATABASE_URL`; where it is unset, a URL made of libpq's own variables (`PGHOST`, `PGPORT`,
/// `PGUSER`, `PGPASSWORD`, `PGDATABASE`, `PGSSLMODE`), the way a container gets a password
/// from a secret store without a shell to splice it into a URL.
pub fn database_url() -> String {
    if let Some(url) = non_empty_var("DATABASE_URL") {
        return url;
    }
    let mut url = url_from_parts(
        "postgres",
        "PGUSER",
        "PGPASSWORD",
        "PGHOST",
        "PGPORT",
        ("postgres", None, "127.0.0.1", "5432"),
    );
    url.push('/');
    url.push_str(&percent_encode(
        &non_empty_var("PGDATABASE").unwrap_or_else(|| "gpuq".into()),
    ));
    if let Some(mode) = non_empty_var("PGSSLMODE") {
        url.push_str("?sslmode=");
        url.push_str(&percent_encode(&mode));
    }
    url
}

/// `AMQP_URL`; where it is unset, a URL made of `AMQP_SCHEME` (`amqp` or `amqps`), `AMQP_HOST`,
/// `AMQP_PORT`, `AMQP_USERNAME`, `AMQP_PASSWORD` and `AMQP_VHOST` (`/` by default).
pub fn amqp_url() -> String {
    if let Some(url) = non_empty_var("AMQP_URL") {
        return url;
    }
    let scheme = non_empty_var("AMQP_SCHEME").unwrap_or_else(|| "amqp".into());
    let port = if scheme == "amqps" { "5671" } else { "5672" };
    let mut url = url_from_parts(
        &scheme,
        "AMQP_USERNAME",
        "AMQP_PASSWORD",
        "AMQP_HOST",
        "AMQP_PORT",
        ("guest", Some("guest"), "127.0.0.1", port),
    );
    url.push('/');
    url.push_str(&percent_encode(
        &non_empty_var("AMQP_VHOST").unwrap_or_else(|| "/".into()),
    ));
    url
}

/// `scheme://user:password@host:port`, each part from its variable or its default; the user
/// and password percent-encoded, so a generated password may hold any character.
fn url_from_parts(
    scheme: &str,
    user_var: &str,
    password_var: &str,
    host_var: &str,
    port_var: &str,
    (user, password, host, port): (&str, Option<&str>, &str, &str),
) -> String {
    let user = non_empty_var(user_var).unwrap_or_else(|| user.into());
    let password = non_empty_var(password_var).or(password.map(String::from));
    let host = non_empty_var(host_var).unwrap_or_else(|| host.into());
    let port = non_empty_var(port_var).unwrap_or_else(|| port.into());
    let credentials = match password {
        Some(p) => format!("{}:{}", percent_encode(&user), percent_encode(&p)),
        None => percent_encode(&user),
    };
    format!("{scheme}://{credentials}@{host}:{port}")
}

/// Encodes every byte but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The variable's value, unless it is unset or empty.
pub fn non_empty_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
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
    non_empty_var(name).unwrap_or_else(|| default.to_string())
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

    #[test]
    fn parts_make_a_url_that_keeps_any_password_intact() {
        let url = url_from_parts(
            "amqps",
            "GPUQ_TEST_UNSET_USER",
            "GPUQ_TEST_UNSET_PASSWORD",
            "GPUQ_TEST_UNSET_HOST",
            "GPUQ_TEST_UNSET_PORT",
            ("gpuq", None, "mq.example", "5671"),
        );
        assert_eq!(url, "amqps://gpuq@mq.example:5671");
        let url = url_from_parts(
            "amqp",
            "GPUQ_TEST_UNSET_USER",
            "GPUQ_TEST_UNSET_PASSWORD",
            "GPUQ_TEST_UNSET_HOST",
            "GPUQ_TEST_UNSET_PORT",
            ("guest", Some("guest"), "127.0.0.1", "5672"),
        );
        assert_eq!(url, "amqp://guest:guest@127.0.0.1:5672");
        assert_eq!(percent_encode("p@ss:w/rd%é"), "p%40ss%3Aw%2Frd%25%C3%A9");
        assert_eq!(
            redact_url("postgres://u:p%40ss@db:5432/x"),
            "postgres://u:***@db:5432/x"
        );
    }
}
