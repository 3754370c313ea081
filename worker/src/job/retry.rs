//! Retrying a database write across a brief outage, and only then: an error that means the
//! database is out of reach ([`db::is_unavailable`]) is tried again with backoff; any other (a
//! constraint, a bad statement, a missing row) would fail the same way again and returns at once.

use gpuq_shared::db;
use std::time::Duration;

/// Tries `f` up to six times, 100 ms apart at first and doubling, while it fails with an
/// "unavailable" error; returns the first success or the first other error at once.
pub(super) async fn retry_db<T, F, Fut>(f: F) -> Result<T, db::DbError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, db::DbError>>,
{
    retry_db_from(Duration::from_millis(100), f).await
}

/// As [`retry_db`], with the first delay given (tests wait less).
async fn retry_db_from<T, F, Fut>(mut delay: Duration, mut f: F) -> Result<T, db::DbError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, db::DbError>>,
{
    for _ in 0..5 {
        match f().await {
            Err(e) if db::is_unavailable(&e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "database unavailable; retrying the write");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            done => return done,
        }
    }
    f().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    async fn calls_until_done(error: fn() -> db::DbError) -> (usize, Result<(), db::DbError>) {
        let calls = AtomicUsize::new(0);
        let result = retry_db_from(Duration::from_millis(1), || {
            calls.fetch_add(1, Ordering::SeqCst);
            let e = error();
            async move { Err::<(), _>(e) }
        })
        .await;
        (calls.load(Ordering::SeqCst), result)
    }

    #[tokio::test]
    async fn an_error_that_is_not_unavailability_returns_after_one_call() {
        let (calls, result) = calls_until_done(|| db::DbError::RowNotFound).await;
        assert_eq!(calls, 1);
        assert!(matches!(result, Err(db::DbError::RowNotFound)));
        let (calls, _) = calls_until_done(|| db::DbError::ColumnNotFound("x".into())).await;
        assert_eq!(calls, 1);
    }

    #[tokio::test]
    async fn a_bad_statement_against_postgres_is_tried_once() {
        let base = std::env::var("GPUQ_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432".into());
        let database =
            gpuq_shared::config::DatabaseSettings::from_url(&format!("{base}/postgres")).unwrap();
        let pool = db::connect(&database, 1).await.unwrap();
        let calls = AtomicUsize::new(0);
        let result = retry_db_from(Duration::from_millis(1), || {
            calls.fetch_add(1, Ordering::SeqCst);
            sqlx::query("SELECT no_such_column FROM no_such_table").execute(&pool)
        })
        .await;
        let e = result.unwrap_err();
        assert!(matches!(e, db::DbError::Database(_)), "{e}");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{e}");
    }

    #[tokio::test]
    async fn an_unavailable_database_is_tried_six_times() {
        let (calls, result) = calls_until_done(|| db::DbError::PoolTimedOut).await;
        assert_eq!(calls, 6);
        assert!(matches!(result, Err(db::DbError::PoolTimedOut)));
    }

    #[tokio::test]
    async fn a_write_that_succeeds_after_an_outage_returns_its_value() {
        let calls = AtomicUsize::new(0);
        let result = retry_db_from(Duration::from_millis(1), || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err(db::DbError::PoolTimedOut)
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(result.unwrap(), 2);
    }
}
