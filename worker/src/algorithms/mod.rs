//! The algorithms gpuq trains and runs, and what a running job can report or be told.

pub mod logreg;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_util::sync::CancellationToken;

/// Shared between a job's GPU thread and its heartbeat task: the progress to report and the
/// request to stop (cancel, or the lease was lost).
pub struct Control {
    stop: AtomicBool,
    /// The worker's abort: fired when it shuts down without waiting for jobs in hand.
    abort: CancellationToken,
    progress: Mutex<Option<(f32, String)>>,
}

impl Default for Control {
    fn default() -> Self {
        Self::new(CancellationToken::new())
    }
}

impl Control {
    pub fn new(abort: CancellationToken) -> Self {
        Self {
            stop: AtomicBool::new(false),
            abort,
            progress: Mutex::new(None),
        }
    }

    pub fn report(&self, fraction: f32, message: String) {
        *self.progress.lock().expect("progress lock") = Some((fraction.clamp(0.0, 1.0), message));
    }

    /// The progress reported since the last call, if any.
    pub fn take_progress(&self) -> Option<(f32, String)> {
        self.progress.lock().expect("progress lock").take()
    }

    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub fn should_stop(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.abort.is_cancelled()
    }
}

/// Formats a class label the way it came in: `3` rather than `3.0`.
pub fn label_text(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}
