//! Liveness and readiness.

use crate::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

/// The process is up.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Postgres and RabbitMQ are reachable; 503 naming what is not, within two seconds.
pub async fn readyz(State(s): State<AppState>) -> (StatusCode, Json<Value>) {
    let limit = Duration::from_secs(2);
    let (db, amqp) = tokio::join!(
        tokio::time::timeout(limit, gpuq_shared::db::ping(&s.pool)),
        tokio::time::timeout(limit, s.publisher.is_ready()),
    );
    let db_ok = matches!(db, Ok(Ok(())));
    let amqp_ok = matches!(amqp, Ok(true));
    let body = json!({"postgres": db_ok, "rabbitmq": amqp_ok});
    if db_ok && amqp_ok {
        (
            StatusCode::OK,
            Json(json!({"status": "ready", "checks": body})),
        )
    } else {
        let error =
            json!({"code": "not_ready", "message": "a dependency is unreachable", "checks": body});
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": error})),
        )
    }
}
