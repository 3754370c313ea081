//! The gpuq HTTP API: validates and records jobs, publishes them, and answers for their state.
//! No GPU code lives here.

pub mod auth;
pub mod error;
pub mod routes;
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
    pub settings: Arc<Settings>,
    pub rate: auth::RateLimiter,
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
    /// Requests per second each tenant may make on average…
    pub rate_per_second: f64,
    /// …and at once.
    pub rate_burst: u32,
    /// How long a client may take to send its request headers.
    pub header_timeout: Duration,
    /// Postgres connections this process may hold.
    pub db_connections: u32,
}

impl ApiSettings {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            shared: Settings::from_env()?,
            addr: var_or("GPUQ_API_ADDR", "127.0.0.1:8080"),
            max_body_bytes: parse_var("GPUQ_MAX_BODY_BYTES", 16 * 1024 * 1024)?,
            reaper: parse_var("GPUQ_API_REAPER", 1u8)? == 1,
            rate_per_second: parse_var("GPUQ_RATE_LIMIT_PER_SECOND", 50.0)?,
            rate_burst: parse_var("GPUQ_RATE_LIMIT_BURST", 100)?,
            header_timeout: Duration::from_secs_f64(parse_var(
                "GPUQ_HEADER_TIMEOUT_SECONDS",
                10.0,
            )?),
            db_connections: parse_var("GPUQ_API_DB_CONNECTIONS", 16)?,
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
        let pool =
            db::connect_waiting(&settings.shared.database, settings.db_connections, shutdown)
                .await?
                .ok_or_else(|| anyhow::anyhow!("stopped before the database was reachable"))?;
        db::migrate(&pool).await?;
        let (url, queue) = (settings.shared.amqp_url.expose(), &settings.shared.queue);
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
            settings: Arc::new(settings.shared.clone()),
            rate: auth::RateLimiter::new(settings.rate_per_second, settings.rate_burst),
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
            let (settings, stop) = (self.settings.shared.clone(), shutdown.clone());
            // Without S3 access (the API calls no AWS API): the workers' reapers sweep orphans.
            tokio::spawn(async move { reaper::run(pool, &publisher, None, &settings, stop).await });
        }
        let app = router(self.state);
        serve(self.listener, app, self.settings.header_timeout, shutdown).await;
        Ok(())
    }
}

/// HTTP/1.1 with a deadline for the request headers (so a client that trickles them cannot hold
/// a connection), until `shutdown`; then in-flight requests get up to 30 s to finish.
async fn serve(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some requests were still running 30 s after shutdown began");
    }
}

pub fn router(state: AppState) -> Router {
    let limit = state.max_body_bytes;
    let v1 = Router::new()
        .route(
            "/v1/jobs",
            post(routes::jobs::submit).get(routes::jobs::list),
        )
        .route("/v1/jobs/{id}", get(routes::jobs::get))
        .route("/v1/jobs/{id}/cancel", post(routes::jobs::cancel))
        .route("/v1/models", get(routes::models::list))
        .route("/v1/models/{id}", get(routes::models::get))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ));
    Router::new()
        .merge(v1)
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

/// Creates an API key for `tenant`, creating the tenant if it is new.
pub async fn create_key(pool: &PgPool, tenant: &str) -> anyhow::Result<gpuq_shared::auth::NewKey> {
    anyhow::ensure!(
        gpuq_shared::auth::valid_tenant(tenant),
        "`{tenant}` is not a valid tenant name: 1 to 63 of a-z, 0-9, `-` and `_`, starting with a letter or digit"
    );
    db::tenant_ensure(pool, tenant).await?;
    let key = gpuq_shared::auth::generate();
    db::api_key_insert(pool, &key.id, tenant, &key.secret_sha256).await?;
    Ok(key)
}
