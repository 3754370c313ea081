//! `gpuq-scaler`: see the library's documentation and `gpuq-scaler --help`.

use clap::Parser;

// One thread: the scaler is light, and the local backend's children tie their lives to the
// thread that started them (PR_SET_PDEATHSIG), which must be one that lives as long as we do.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = gpuq_scaler::Args::parse();
    // stdout carries the decision log alone.
    gpuq_shared::telemetry::init_stderr();
    args.policy()?;
    let shutdown = gpuq_shared::shutdown::on_signal("stopping; local workers drain first");
    gpuq_scaler::run(args, shutdown).await
}
