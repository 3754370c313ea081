//! The Postgres layer: every SQL statement gpuq runs, one function each, named noun-first, in one
//! file per table (river's layout): [`jobs`] (the state machine), [`idempotency`] (keys of
//! submissions), [`models`], [`tenants`] (tenants and their API keys) and [`workers`]; [`retention`]
//! deletes finished work, [`election`] holds the maintenance lock and [`objects`] asks both jobs
//! and models whether an S3 object is still wanted. Each job
//! state transition is one function with one guarded `UPDATE`; nothing else writes `status`.
//! Completion writes are fenced by `attempt` so a worker that lost its lease cannot overwrite
//! the work of the one that took the job over. Everything is re-exported here: callers write
//! `db::job_get`.

mod election;
mod idempotency;
mod jobs;
mod models;
mod objects;
mod retention;
mod tenants;
mod workers;

pub use election::*;
pub use idempotency::*;
pub use jobs::*;
pub use models::*;
pub use objects::*;
pub use retention::*;
pub use tenants::*;
pub use workers::*;

pub use crate::config::Backoff;
use crate::config::DatabaseSettings;
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::time::Duration;

pub use sqlx::Error as DbError;

/// Whether an error means the database is (for now) out of reach rather than that the statement
/// was wrong: worth a retry, and `503` at the API.
pub fn is_unavailable(e: &DbError) -> bool {
    match e {
        DbError::Io(_) | DbError::PoolTimedOut | DbError::PoolClosed | DbError::Tls(_) => true,
        DbError::Protocol(_) | DbError::WorkerCrashed => true,
        // SQLSTATE classes 08 (connection exception), 57 (operator intervention: shutdown,
        // restart) and 53 (insufficient resources).
        DbError::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57") || c.starts_with("53")),
        _ => false,
    }
}

/// A pooled connection idle this long is pinged before it is handed out.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(1);

/// Connects a pool; `max` bounds its connections. A connection idle for a second or more is
/// tested before use, so after a database restart the pool replaces dead connections instead of
/// handing them out.
pub async fn connect(database: &DatabaseSettings, max: u32) -> Result<PgPool, DbError> {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(3))
        // A ping before every use would double the round trips of the hot path; a connection
        // idle for a while is the one that may have died unseen (a database restart), so only
        // that one is pinged. One that dies in use fails its statement, which is retried or
        // answered `503`, and leaves the pool.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for < IDLE_BEFORE_PING {
                    return Ok(true);
                }
                use sqlx::Connection;
                Ok(conn.ping().await.is_ok())
            })
        })
        .connect_with(database.options().clone())
        .await
}

/// As [`connect`], but while the database is unreachable (a fresh deployment, a restart) it
/// waits and tries again, with backoff, until `stop`; `None` when stopped first.
pub async fn connect_waiting(
    database: &DatabaseSettings,
    max: u32,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<Option<PgPool>, DbError> {
    let mut delay = Duration::from_millis(250);
    loop {
        match connect(database, max).await {
            Ok(pool) => return Ok(Some(pool)),
            Err(e) if is_unavailable(&e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "database unreachable; waiting");
                tokio::select! {
                    _ = stop.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Applies the migrations in `migrations/` (forward-only).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("../migrations").run(pool).await
}

/// Readiness probe.
pub async fn ping(pool: &PgPool) -> Result<(), DbError> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
}

/// Stores a domain enum as its `snake_case` name in a `text` column (the schema's `CHECK`s hold
/// the same names), and reads it back typed: a row is parsed once, where it leaves Postgres.
macro_rules! text_column {
    ($($ty:ty),*) => {$(
        impl sqlx::Type<sqlx::Postgres> for $ty {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<sqlx::Postgres>>::type_info()
            }
            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $ty {
            fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                let s = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
                Ok(s.parse::<$ty>()?)
            }
        }

        impl sqlx::Encode<'_, sqlx::Postgres> for $ty {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::Postgres>>::encode(self.as_str(), buf)
            }
        }
    )*};
}

text_column!(
    crate::domain::JobType,
    crate::domain::JobStatus,
    crate::domain::Algorithm
);
