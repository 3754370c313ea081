//! The gpuq HTTP API: validates and records jobs, publishes them, and answers for their state.
//! No GPU code lives here.

pub mod error;
pub mod routes;
pub mod submit;
pub mod view;
pub mod waiters;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use error::ApiError;
use gpuq_shared::config::{Settings, parse_var, var_or};
use gpuq_shared::queue::Publisher;
use gpuq_shared::{db, reaper};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use waiters::Waiters;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub publisher: Arc<Publisher>,
    pub waiters: Waiters,
    pub max_body_bytes: usize,
    pub default_max_attempts: i32,
}

/// Settings of the API process on top of the shared ones.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub shared: Settings,
    /// `host:port` to listen on; port 0 picks a free one.
    pub addr: String,
    pub max_body_bytes: usize,
    /// Run the reaper in this process too (on by default, so jobs are never stranded when no
    /// worker runs).
    pub reaper: bool,
}

impl ApiSettings {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            shared: Settings::from_env()?,
            addr: var_or("GPUQ_API_ADDR", "127.0.0.1:8080"),
            max_body_bytes: parse_var("GPUQ_MAX_BODY_BYTES", 16 * 1024 * 1024)?,
            reaper: parse_var("GPUQ_API_REAPER", 1u8)? == 1,
        })
    }
}

pub struct Application {
    listener: TcpListener,
    state: AppState,
    settings: ApiSettings,
}

impl Application {
    /// Connects to Postgres (running the migrations) and RabbitMQ, and binds the port.
    pub async fn build(
        settings: ApiSettings,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let pool = db::connect(&settings.shared.database_url, 16).await?;
        db::migrate(&pool).await?;
        let (url, queue) = (&settings.shared.amqp_url, &settings.shared.queue);
        // Start even while the broker is down: `/readyz` says so, submits are recorded and the
        // reaper publishes them once it is back.
        let publisher = match Publisher::connect(url, queue).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "RabbitMQ unreachable at start; will keep trying");
                Publisher::lazy(url, queue)
            }
        };
        let publisher = Arc::new(publisher);
        let listener = TcpListener::bind(&settings.addr).await?;
        let state = AppState {
            waiters: Waiters::start(pool.clone(), shutdown.clone()),
            pool,
            publisher,
            max_body_bytes: settings.max_body_bytes,
            default_max_attempts: settings.shared.lifecycle.max_attempts,
        };
        Ok(Self {
            listener,
            state,
            settings,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().expect("bound").port()
    }

    /// Serves until `shutdown`, then drains in-flight requests.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        if self.settings.reaper {
            let (pool, publisher) = (self.state.pool.clone(), self.state.publisher.clone());
            let (lifecycle, stop) = (self.settings.shared.lifecycle.clone(), shutdown.clone());
            tokio::spawn(async move { reaper::run(pool, &publisher, lifecycle, stop).await });
        }
        let app = router(self.state);
        axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await?;
        Ok(())
    }
}

pub fn router(state: AppState) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route(
            "/v1/jobs",
            post(routes::jobs::submit).get(routes::jobs::list),
        )
        .route("/v1/jobs/{id}", get(routes::jobs::get))
        .route("/v1/jobs/{id}/cancel", post(routes::jobs::cancel))
        .route("/v1/models", get(routes::models::list))
        .route("/v1/models/{id}", get(routes::models::get))
        .route("/healthz", get(routes::health::healthz))
        .route("/readyz", get(routes::health::readyz))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(limit))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(90),
        ))
        .with_state(state)
}
