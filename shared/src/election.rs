//! Electing the one process that runs maintenance. Every API and worker contends; the winner is
//! whoever holds a Postgres advisory lock, taken with `pg_try_advisory_lock` on a connection of
//! its own (outside the pool, so the lock is never lent out with a pooled connection). The lock
//! lives as long as that connection: when the leader stops or dies, or its connection drops,
//! Postgres releases it and the next contender to try takes it over.
//!
//! Before each round of maintenance the leader checks that its connection still holds the lock,
//! so a leader cut off from the database stops within one round and reconnects to contend
//! again. Two leaders can overlap only for that round (a connection the server has already
//! dropped but the leader has not yet noticed); maintenance is safe to run twice at once, the
//! lock is there to keep it from being done by every process every time.

use crate::config::DatabaseSettings;
use crate::db;
use sqlx::{Connection, PgConnection};
use std::time::Duration;

/// How long connecting and each check may take before the leader counts itself out.
const TIMEOUT: Duration = Duration::from_secs(5);

/// One process's standing in the election.
pub struct Election {
    database: DatabaseSettings,
    conn: Option<PgConnection>,
    leading: bool,
}

impl Election {
    pub fn new(database: &DatabaseSettings) -> Self {
        Self {
            database: database.clone(),
            conn: None,
            leading: false,
        }
    }

    /// Whether this process leads now: keeps the lock if it holds it, takes it if it is free.
    /// Errors (no database, a dropped connection) count as not leading; the next call tries
    /// again on a fresh connection.
    pub async fn lead(&mut self) -> bool {
        match tokio::time::timeout(TIMEOUT, self.try_lead()).await {
            Ok(Ok(leading)) => {
                if leading != self.leading {
                    if leading {
                        tracing::info!("elected: this process runs maintenance");
                    } else {
                        tracing::warn!("lost the maintenance lock");
                    }
                }
                self.leading = leading;
            }
            Ok(Err(e)) => self.drop_connection(&format!("{e}")),
            Err(_) => self.drop_connection("timed out"),
        }
        self.leading
    }

    async fn try_lead(&mut self) -> Result<bool, db::DbError> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self
                .conn
                .insert(PgConnection::connect_with(self.database.options()).await?),
        };
        if self.leading {
            return db::maintenance_lock_held(conn).await;
        }
        db::maintenance_lock_try(conn).await
    }

    fn drop_connection(&mut self, why: &str) {
        if self.leading {
            tracing::warn!(error = why, "lost the maintenance lock's connection");
        } else {
            tracing::debug!(error = why, "cannot contend for the maintenance lock");
        }
        // Dropping it closes the socket: the server ends the session and releases the lock.
        self.conn = None;
        self.leading = false;
    }

    /// Gives the lock up (closes its connection), so another process takes over at once.
    pub async fn resign(&mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = tokio::time::timeout(TIMEOUT, conn.close()).await;
        }
        if self.leading {
            tracing::info!("resigned from running maintenance");
        }
        self.leading = false;
    }
}
