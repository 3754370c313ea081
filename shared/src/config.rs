//! Configuration from environment variables (12-factor), read in one place per binary: each
//! binary's settings tree (`ApiSettings`, `WorkerSettings`, the scaler's `Args`) is built once at
//! start from [`Settings::from_env`] and its own variables, and passed down; nothing below reads
//! the environment (the AWS SDK's own credential chain aside). Every variable has a development
//! default matching `scripts/dev`, so a bare `gpuq-api` or `gpuq-worker` runs against the dev
//! stack. Passwords live in [`Secret`]s and [`DatabaseSettings`], whose `Debug` masks them.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A value that must not reach a log: `Debug` shows `***`. Read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where Postgres is: sqlx's own connect options, from `DATABASE_URL` or, where it is unset,
/// from libpq's variables (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`,
/// `PGSSLMODE`, …) as sqlx reads them, with the dev stack's host, user and database where those
/// are unset. `Debug` shows where, never the password.
#[cfg(feature = "services")]
#[derive(Clone)]
pub struct DatabaseSettings(sqlx::postgres::PgConnectOptions);

#[cfg(feature = "services")]
impl DatabaseSettings {
    pub fn from_env() -> Result<Self, ConfigError> {
        if let Some(url) = non_empty_var("DATABASE_URL") {
            return Self::from_url(&url).map_err(|_| ConfigError {
                name: "DATABASE_URL".into(),
                value: redact_url(&url),
            });
        }
        let mut options = sqlx::postgres::PgConnectOptions::new();
        if non_empty_var("PGHOST").is_none() {
            options = options.host("127.0.0.1");
        }
        if non_empty_var("PGUSER").is_none() {
            options = options.username("postgres");
        }
        if non_empty_var("PGDATABASE").is_none() {
            options = options.database("gpuq");
        }
        Ok(Self(options))
    }

    pub fn from_url(url: &str) -> Result<Self, sqlx::Error> {
        url.parse().map(Self)
    }

    pub fn options(&self) -> &sqlx::postgres::PgConnectOptions {
        &self.0
    }
}

#[cfg(feature = "services")]
impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.0;
        write!(
            f,
            "postgres://{}@{}:{}/{}",
            o.get_username(),
            o.get_host(),
            o.get_port(),
            o.get_database().unwrap_or_default()
        )
    }
}

/// Settings both binaries need: where Postgres, RabbitMQ and S3 are, and the job lifecycle timings.
/// Its `Debug` hides the passwords, so logging it leaks no secret.
#[cfg(feature = "services")]
#[derive(Clone, Debug)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub amqp_url: Secret,
    /// Durable queue the jobs are published to.
    pub queue: String,
    /// Bucket that outputs and model artifacts are written to.
    pub bucket: String,
    /// Key prefix (may be empty) under which outputs and artifacts are written.
    pub s3_prefix: String,
    pub lifecycle: Lifecycle,
    pub limits: Limits,
    pub retention: Retention,
}

/// How long finished work is kept before the maintenance loop deletes it; `None` keeps it
/// forever (the default).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Retention {
    /// Finished jobs (`succeeded`, `failed`, `canceled`) and their output objects, counted from
    /// when they finished. Models are kept until deleted.
    pub jobs: Option<Duration>,
    /// Idempotency keys, counted from the submission: a key older than this makes a new job.
    pub idempotency_keys: Option<Duration>,
}

impl Retention {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            jobs: days_var("GPUQ_RETAIN_JOBS_DAYS")?,
            idempotency_keys: days_var("GPUQ_RETAIN_IDEMPOTENCY_DAYS")?,
        })
    }
}

/// A positive number of days (fractions allowed), or `None` when the variable is unset or empty.
fn days_var(name: &str) -> Result<Option<Duration>, ConfigError> {
    let Some(value) = non_empty_var(name) else {
        return Ok(None);
    };
    match value.parse::<f64>() {
        Ok(days) if days > 0.0 && days.is_finite() && days < 1e6 => {
            Ok(Some(Duration::from_secs_f64(days * 86_400.0)))
        }
        _ => Err(ConfigError {
            name: name.into(),
            value,
        }),
    }
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
    /// How old a `queued` job's message must be before the reaper may take it for lost, which it
    /// does only while the queue holds fewer messages than queued jobs (see `reaper.rs`). Also
    /// caps how long a recorded job may go unmarked before the reaper publishes it.
    pub republish_after: Duration,
    /// How often the elected process sweeps (reaper, retention) and the others contend.
    pub reaper_interval: Duration,
    /// Attempts a job gets before a retryable failure becomes final.
    pub max_attempts: i32,
    /// How long a job sent back to the queue waits before it runs again.
    pub backoff: Backoff,
    /// `timeout_s` of a job that does not set one.
    pub default_timeout_s: u32,
    /// How often the maintenance loop looks for orphaned outputs and model files.
    pub orphan_sweep_interval: Duration,
    /// Only objects older than this may be swept as orphans.
    pub orphan_grace: Duration,
}

#[cfg(feature = "services")]
impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            database: DatabaseSettings::from_env()?,
            amqp_url: Secret::new(amqp_url()),
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
                orphan_sweep_interval: Duration::from_secs_f64(parse_var(
                    "GPUQ_ORPHAN_SWEEP_INTERVAL_SECONDS",
                    600.0,
                )?),
                orphan_grace: Duration::from_secs_f64(parse_var(
                    "GPUQ_ORPHAN_GRACE_SECONDS",
                    3600.0,
                )?),
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
            retention: Retention::from_env()?,
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
    fn secrets_and_database_settings_never_show_a_password() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(s.expose(), "hunter2");
        let db =
            DatabaseSettings::from_url("postgres://gpuq:hunter2@db.internal:6432/jobs").unwrap();
        let shown = format!("{db:?}");
        assert_eq!(shown, "postgres://gpuq@db.internal:6432/jobs");
        assert!(!shown.contains("hunter2"));
    }

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

    #[test]
    fn retention_is_forever_unless_a_positive_number_of_days_is_set() {
        assert_eq!(days_var("GPUQ_TEST_UNSET_RETAIN").unwrap(), None);
        // SAFETY: these variables are read by this test only.
        unsafe {
            std::env::set_var("GPUQ_TEST_RETAIN_HALF", "0.5");
            std::env::set_var("GPUQ_TEST_RETAIN_ZERO", "0");
            std::env::set_var("GPUQ_TEST_RETAIN_WORD", "week");
        }
        assert_eq!(
            days_var("GPUQ_TEST_RETAIN_HALF").unwrap(),
            Some(Duration::from_secs(43_200))
        );
        assert!(days_var("GPUQ_TEST_RETAIN_ZERO").is_err());
        assert!(days_var("GPUQ_TEST_RETAIN_WORD").is_err());
    }
}
