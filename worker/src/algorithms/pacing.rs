//! How much GPU work one submission carries. A stop (cancel, timeout, shutdown) takes effect
//! only between submissions, so each is sized to take about [`TARGET`] of device time: the
//! first from a small fixed amount of work, each next one from how long the last took. A fast
//! device gets large submissions, lavapipe small ones, and either stops within one.

use super::Control;
use gpuq_shared::JobError;
use std::time::{Duration, Instant};

/// Device time one submission should take.
pub const TARGET: Duration = Duration::from_millis(200);
/// Work (multiply-adds, roughly) of the first submission: a few tens of milliseconds on
/// lavapipe, microseconds on a GPU.
const FIRST_WORK: usize = 1 << 24;

/// Runs `step(start, len)` over `0..total` in consecutive ranges, checking `ctl` before each.
/// One unit (a row, a reference) costs `work_per_unit` multiply-adds; no range is longer than
/// `max_len` (what one binding holds). `step` must finish its GPU work before it returns (a
/// readback or [`Gpu::wait`](crate::gpu::Gpu::wait)), so that the time it takes is the device's.
pub fn paced(
    total: usize,
    work_per_unit: usize,
    max_len: usize,
    ctl: &Control,
    mut step: impl FnMut(usize, usize) -> Result<(), JobError>,
) -> Result<(), JobError> {
    let max_len = max_len.max(1);
    let mut len = (FIRST_WORK / work_per_unit.max(1)).clamp(1, max_len);
    let mut start = 0;
    while start < total {
        ctl.check()?;
        let this = len.min(total - start);
        let began = Instant::now();
        step(start, this)?;
        len = next_len(this, began.elapsed()).clamp(1, max_len);
        start += this;
    }
    Ok(())
}

/// The length that would have taken [`TARGET`], moving at most fourfold from `done`.
fn next_len(done: usize, took: Duration) -> usize {
    let ratio = TARGET.as_secs_f64() / took.as_secs_f64().max(1e-6);
    (done as f64 * ratio.clamp(0.25, 4.0)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithms::StopReason;
    use gpuq_shared::ErrorCode;

    #[test]
    fn ranges_cover_the_whole_span_in_order_and_grow_when_steps_are_quick() {
        let mut seen = Vec::new();
        paced(1_000_000, 1 << 20, 100_000, &Control::default(), |s, l| {
            seen.push((s, l));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen[0], (0, 16));
        assert_eq!(seen[1], (16, 64), "quick steps grow fourfold");
        let mut next = 0;
        for &(s, l) in &seen {
            assert_eq!(s, next);
            assert!((1..=100_000).contains(&l));
            next = s + l;
        }
        assert_eq!(next, 1_000_000);
    }

    #[test]
    fn a_slow_step_shrinks_the_next_toward_the_target() {
        assert_eq!(next_len(1000, TARGET * 2), 500);
        assert_eq!(next_len(1000, TARGET * 100), 250);
        assert_eq!(next_len(1000, TARGET / 2), 2000);
    }

    #[test]
    fn a_stopped_control_ends_the_loop_before_the_next_step() {
        let ctl = Control::default();
        let mut steps = 0;
        let err = paced(100, 1 << 24, 1, &ctl, |_, _| {
            steps += 1;
            if steps == 3 {
                ctl.stop(StopReason::TimedOut);
            }
            Ok(())
        })
        .unwrap_err();
        assert_eq!((steps, err.code), (3, ErrorCode::Stopped));
    }
}
