//! `gpuq-worker`: pulls jobs and runs them on the GPU. SIGTERM stops taking jobs and lets the
//! ones in hand finish (up to `GPUQ_DRAIN_SECONDS`).

use gpuq_worker::WorkerSettings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    gpuq_shared::telemetry::init();
    let settings = WorkerSettings::from_env()?;
    let shutdown = gpuq_shared::shutdown::on_signal("finishing the jobs in hand");
    gpuq_worker::run(settings, shutdown).await
}
