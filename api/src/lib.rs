//! The gpuq HTTP API: validates and records jobs, publishes them, and answers for their state.
//! No GPU code lives here.

pub mod auth;
pub mod error;
pub mod intake;
pub mod models_seen;
pub mod rate;
pub mod routes;
pub mod view;
pub mod waiters;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit};
use axum::routing::{get, post};
use error::ApiError;
use gpuq_shared::config::{Settings, parse_var, var_or};
use gpuq_shared::db;
use gpuq_shared::maintenance::Maintenance;
use gpuq_shared::queue::Publisher;
use gpuq_shared::storage::Storage;
use rate::RateLimiter;
use sqlx::PgPool;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use waiters::Waiters;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub publisher: Arc<Publisher>,
    /// Records and publishes single submits in groups.
    pub intake: intake::Intake,
    pub waiters: Waiters,
    /// Jobs one `POST /v1/jobs/batch` may hold.
    pub max_batch_jobs: usize,
    /// Models infer submits named a moment ago.
    pub models_seen: models_seen::ModelsSeen,
    pub max_body_bytes: usize,
    pub settings: Arc<Settings>,
    /// Each tenant's requests.
    pub rate: RateLimiter<String>,
    /// Each client address's failed authentication attempts (IPv6 by /64).
    pub attempts: RateLimiter<IpAddr>,
    /// Proxies in front of the API whose `X-Forwarded-For` entries are believed.
    pub trusted_proxy_hops: usize,
    /// Deletes the outputs of deleted jobs and the artifacts of deleted models, and presigns.
    pub storage: Storage,
    /// How long a presigned URL lasts.
    pub presign: Duration,
}

/// Settings of the API process on top of the shared ones.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub shared: Settings,
    /// `host:port` to listen on; port 0 picks a free one.
    pub addr: String,
    pub max_body_bytes: usize,
    /// Jobs one `POST /v1/jobs/batch` may hold (`GPUQ_MAX_BATCH_JOBS`).
    pub max_batch_jobs: usize,
    /// Contend to run maintenance (the reaper, retention) in this process too (on by default,
    /// so jobs are never stranded when no worker runs); one process at a time is elected.
    pub reaper: bool,
    /// Requests per second each tenant may make on average…
    pub rate_per_second: f64,
    /// …and at once.
    pub rate_burst: u32,
    /// Failed authentication attempts each client address may make per second on average…
    pub auth_failures_per_second: f64,
    /// …and at once; past them the address gets `429` before any key is looked up.
    pub auth_failures_burst: u32,
    /// Proxies in front of the API that append the address they received from to
    /// `X-Forwarded-For` (the AWS load balancer: 1); 0 takes the peer as the client.
    pub trusted_proxy_hops: usize,
    /// Requests one tenant may have waiting on jobs at once (`?wait=`, `Prefer: wait=`).
    pub max_waiters_per_tenant: usize,
    /// How long a client may take to send its request headers.
    pub header_timeout: Duration,
    /// Postgres connections this process may hold.
    pub db_connections: u32,
    /// How long presigned upload and download URLs last (`GPUQ_PRESIGN_SECONDS`).
    pub presign: Duration,
}

impl ApiSettings {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            shared: Settings::from_env()?,
            addr: var_or("GPUQ_API_ADDR", "127.0.0.1:8080"),
            max_body_bytes: parse_var("GPUQ_MAX_BODY_BYTES", 16 * 1024 * 1024)?,
            max_batch_jobs: parse_var("GPUQ_MAX_BATCH_JOBS", 1000usize)?.max(1),
            reaper: parse_var("GPUQ_API_REAPER", 1u8)? == 1,
            rate_per_second: parse_var("GPUQ_RATE_LIMIT_PER_SECOND", 50.0)?,
            rate_burst: parse_var("GPUQ_RATE_LIMIT_BURST", 100)?,
            auth_failures_per_second: parse_var("GPUQ_AUTH_FAILURES_PER_SECOND", 1.0)?,
            auth_failures_burst: parse_var("GPUQ_AUTH_FAILURES_BURST", 20)?,
            trusted_proxy_hops: parse_var("GPUQ_TRUSTED_PROXY_HOPS", 0)?,
            max_waiters_per_tenant: parse_var("GPUQ_MAX_WAITERS_PER_TENANT", 100)?,
            header_timeout: Duration::from_secs_f64(parse_var(
                "GPUQ_HEADER_TIMEOUT_SECONDS",
                10.0,
            )?),
            db_connections: parse_var("GPUQ_API_DB_CONNECTIONS", 16)?,
            presign: {
                // SigV4 caps a presigned URL at seven days.
                let secs: u64 = parse_var("GPUQ_PRESIGN_SECONDS", 900)?;
                anyhow::ensure!(
                    (1..=604_800).contains(&secs),
                    "GPUQ_PRESIGN_SECONDS must be 1 to 604800, not {secs}"
                );
                Duration::from_secs(secs)
            },
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
            waiters: Waiters::start(
                pool.clone(),
                settings.max_waiters_per_tenant,
                shutdown.clone(),
            ),
            intake: intake::Intake::start(pool.clone(), publisher.clone()),
            pool,
            publisher,
            max_body_bytes: settings.max_body_bytes,
            max_batch_jobs: settings.max_batch_jobs,
            models_seen: Default::default(),
            settings: Arc::new(settings.shared.clone()),
            rate: RateLimiter::new(settings.rate_per_second, settings.rate_burst),
            attempts: RateLimiter::new(
                settings.auth_failures_per_second,
                settings.auth_failures_burst,
            ),
            trusted_proxy_hops: settings.trusted_proxy_hops,
            storage: Storage::from_env().await,
            presign: settings.presign,
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
            let maintenance = Maintenance::new(
                self.state.pool.clone(),
                self.state.publisher.clone(),
                self.state.storage.clone(),
                self.settings.shared.clone(),
            );
            let stop = shutdown.clone();
            tokio::spawn(async move { maintenance.run(stop).await });
        }
        let app = router(self.state);
        serve(self.listener, app, self.settings.header_timeout, shutdown).await;
        Ok(())
    }
}

/// HTTP/1.1 with a deadline for the request headers (so a client that trickles them cannot hold
/// a connection), until `shutdown`; then in-flight requests get up to 30 s to finish. Each
/// request carries its peer's address (`ConnectInfo<SocketAddr>`).
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
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let app = app
            .clone()
            .map_request(move |mut request: axum::extract::Request<_>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            });
        let service = hyper_util::service::TowerToHyperService::new(app);
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
        .route("/v1/jobs/batch", post(routes::jobs::submit_batch))
        .route(
            "/v1/jobs/{id}",
            get(routes::jobs::get).delete(routes::jobs::delete),
        )
        .route("/v1/jobs/{id}/cancel", post(routes::jobs::cancel))
        .route("/v1/jobs/{id}/output", get(routes::files::job_output))
        .route("/v1/jobs/{id}/events", get(routes::events::stream))
        .route("/v1/uploads", post(routes::files::create))
        .route(
            "/v1/models/{id}/artifact",
            get(routes::files::model_artifact),
        )
        .route("/v1/models", get(routes::models::list))
        .route("/v1/fleets", get(routes::fleets::list))
        .route(
            "/v1/fleets/{id}",
            get(routes::fleets::get).delete(routes::fleets::delete),
        )
        .route("/v1/fleets/{id}/groups", get(routes::fleets::groups))
        .route("/v1/fleets/{id}/groups/{group}", get(routes::fleets::group))
        .route(
            "/v1/models/{id}",
            get(routes::models::get).delete(routes::models::delete),
        )
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
