//! `gpuq-api`: the HTTP front of gpuq. Configuration: see the README's table of variables.

use gpuq_api::{ApiSettings, Application};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    gpuq_shared::telemetry::init();
    let settings = ApiSettings::from_env()?;
    let shutdown = CancellationToken::new();
    let app = Application::build(settings, &shutdown).await?;
    tracing::info!(port = app.port(), "gpuq-api listening");
    let stop = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: draining in-flight requests");
        stop.cancel();
    });
    app.run_until_stopped(shutdown).await
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
