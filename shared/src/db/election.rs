//! The advisory lock that elects the one process running maintenance (see `election.rs` at the
//! crate root). Session-level: held by the connection that took it, released when that
//! connection ends, whatever way it ends.

use super::DbError;
use sqlx::PgConnection;

/// The lock's key, one per database: `"gpuqmain"` in ASCII.
const MAINTENANCE_LOCK: i64 = 0x6770_7571_6d61_696e;

/// Takes the maintenance lock on this connection if no other session holds it. Taking it again
/// on a connection that holds it succeeds (and stacks: the connection's end releases all).
pub async fn maintenance_lock_try(conn: &mut PgConnection) -> Result<bool, DbError> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(MAINTENANCE_LOCK)
        .fetch_one(conn)
        .await
}

/// Whether this connection still holds the maintenance lock (it also proves the connection
/// alive).
pub async fn maintenance_lock_held(conn: &mut PgConnection) -> Result<bool, DbError> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_locks
                        WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
                          AND classid = ($1 >> 32)::oid AND objid = ($1 & 4294967295)::oid
                          AND objsubid = 1)",
    )
    .bind(MAINTENANCE_LOCK)
    .fetch_one(conn)
    .await
}
