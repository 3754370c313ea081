//! How the binaries learn they must stop: SIGTERM (ECS, `scripts/dev down`, the scaler) or
//! Ctrl-C.

use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGTERM or Ctrl-C; `what` is logged when it is (what the
/// process does about it).
pub fn on_signal(what: &'static str) -> CancellationToken {
    let token = CancellationToken::new();
    let stop = token.clone();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler can be installed");
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down: {what}");
        stop.cancel();
    });
    token
}
