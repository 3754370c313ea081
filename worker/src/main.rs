//! `gpuq-worker`: pulls jobs and runs them on the GPU. SIGTERM stops taking jobs and lets the
//! ones in hand finish (up to `GPUQ_DRAIN_SECONDS`).

use gpuq_worker::WorkerSettings;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    gpuq_shared::telemetry::init();
    let settings = WorkerSettings::from_env()?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down: finishing the jobs in hand");
        stop.cancel();
    });
    gpuq_worker::run(settings, shutdown).await
}
