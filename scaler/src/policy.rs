//! The scaling policy, a pure function of the backlog, the pool and what it remembers.
//!
//! - **Need**: `ceil((queued + running) / target_backlog)`, clamped to `[min, max]`.
//! - **Scale-out** at once, straight to the need (from zero on the first queued job).
//! - **Scale-in** only once the pool has been larger than the need for `idle` without a break,
//!   then one worker at a time, at most one step per `step_interval`. Any moment of need
//!   restarts the idle clock, so a flapping backlog never shrinks the pool.

use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub min: u32,
    pub max: u32,
    /// Jobs (queued or running) one worker is meant to carry.
    pub target_backlog: u32,
    /// How long the pool must have been too large before it shrinks.
    pub idle: Duration,
    /// The least time between two scale-in steps.
    pub step_interval: Duration,
}

/// What the scaler sees on one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Observation {
    pub queued: u64,
    pub running: u64,
    /// Workers in the pool (local: children not draining; ECS: the service's desired count).
    pub current: u32,
}

/// What the policy remembers between ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Memory {
    /// Since when the pool has been larger than the need, without a break.
    surplus_since: Option<Instant>,
    /// When the last scale-in step was decided.
    last_step_in: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The backlog needs more workers: scale out now.
    ScaleOut,
    /// The backlog needs more workers than `max`: the pool is (or goes) at `max`.
    AtMax,
    /// The pool has what the backlog needs.
    Steady,
    /// The pool is larger than the need, not yet for `idle`: wait.
    Cooldown,
    /// The pool has been too large for `idle`: one worker fewer.
    ScaleIn,
    /// Too large, but the last step was less than `step_interval` ago: wait.
    StepWait,
    /// Outside `[min, max]` (the limits changed, or a worker died): back inside at once.
    OutOfBounds,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub desired: u32,
    pub reason: Reason,
}

impl Policy {
    /// Workers the backlog needs, clamped to `[min, max]`.
    pub fn need(&self, o: &Observation) -> u32 {
        self.unclamped_need(o)
            .clamp(self.min as u64, self.max as u64) as u32
    }

    fn unclamped_need(&self, o: &Observation) -> u64 {
        (o.queued + o.running).div_ceil(self.target_backlog.max(1) as u64)
    }

    /// The decision for one tick, and what to remember for the next.
    pub fn decide(&self, o: &Observation, memory: Memory, now: Instant) -> (Decision, Memory) {
        let need = self.need(o);
        let at_max = self.unclamped_need(o) > self.max as u64;
        let mut memory = memory;
        if need >= o.current {
            memory.surplus_since = None;
        }
        let decision = if o.current < self.min || o.current > self.max {
            memory.surplus_since = None;
            Decision {
                desired: o.current.clamp(self.min, self.max).max(need),
                reason: Reason::OutOfBounds,
            }
        } else if need > o.current {
            Decision {
                desired: need,
                reason: if at_max {
                    Reason::AtMax
                } else {
                    Reason::ScaleOut
                },
            }
        } else if need == o.current {
            Decision {
                desired: need,
                reason: if at_max {
                    Reason::AtMax
                } else {
                    Reason::Steady
                },
            }
        } else {
            let since = *memory.surplus_since.get_or_insert(now);
            let step_due = memory
                .last_step_in
                .is_none_or(|last| now.duration_since(last) >= self.step_interval);
            if now.duration_since(since) < self.idle {
                Decision {
                    desired: o.current,
                    reason: Reason::Cooldown,
                }
            } else if !step_due {
                Decision {
                    desired: o.current,
                    reason: Reason::StepWait,
                }
            } else {
                memory.last_step_in = Some(now);
                Decision {
                    desired: o.current - 1,
                    reason: Reason::ScaleIn,
                }
            }
        };
        (decision, memory)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(min: u32, max: u32) -> Policy {
        Policy {
            min,
            max,
            target_backlog: 8,
            idle: Duration::from_secs(60),
            step_interval: Duration::from_secs(10),
        }
    }

    /// Runs the policy over a script of (seconds from start, queued, running), applying each
    /// decision to the pool as a backend would; returns the pool size after each tick.
    fn simulate(p: &Policy, start: u32, ticks: &[(u64, u64, u64)]) -> Vec<(u32, Reason)> {
        let t0 = Instant::now();
        let mut memory = Memory::default();
        let mut current = start;
        let mut out = Vec::new();
        for &(at, queued, running) in ticks {
            let o = Observation {
                queued,
                running,
                current,
            };
            let (d, m) = p.decide(&o, memory, t0 + Duration::from_secs(at));
            memory = m;
            current = d.desired;
            out.push((current, d.reason));
        }
        out
    }

    #[test]
    fn need_is_the_backlog_over_the_target_rounded_up_and_clamped() {
        let p = policy(0, 4);
        let need = |queued, running| {
            p.need(&Observation {
                queued,
                running,
                current: 0,
            })
        };
        assert_eq!(need(0, 0), 0);
        assert_eq!(need(1, 0), 1);
        assert_eq!(need(8, 0), 1);
        assert_eq!(need(5, 4), 2);
        assert_eq!(need(24, 0), 3);
        assert_eq!(need(1000, 0), 4);
        let mut p = policy(0, 8);
        p.target_backlog = 10;
        assert_eq!(
            p.need(&Observation {
                queued: 35,
                running: 0,
                current: 0
            }),
            4
        );
    }

    #[test]
    fn a_spike_scales_out_at_once_from_zero() {
        let p = policy(0, 4);
        let ticks = simulate(&p, 0, &[(0, 0, 0), (1, 1, 0), (2, 24, 1)]);
        assert_eq!(ticks[0], (0, Reason::Steady));
        assert_eq!(
            ticks[1],
            (1, Reason::ScaleOut),
            "the first queued job starts a worker"
        );
        assert_eq!(
            ticks[2],
            (4, Reason::ScaleOut),
            "25 jobs / 8 → 4, in one step"
        );
    }

    #[test]
    fn the_pool_stops_at_max_and_says_so() {
        let p = policy(0, 4);
        let ticks = simulate(&p, 0, &[(0, 500, 0), (1, 480, 20), (2, 32, 0)]);
        assert_eq!(ticks[0], (4, Reason::AtMax));
        assert_eq!(ticks[1], (4, Reason::AtMax));
        assert_eq!(
            ticks[2],
            (4, Reason::Steady),
            "32 / 8 = 4: exactly max, no longer short"
        );
    }

    #[test]
    fn scale_in_waits_for_the_idle_time_then_goes_one_step_at_a_time() {
        let p = policy(0, 4);
        let mut script = vec![(0, 30, 2)];
        script.extend((1..=100).map(|s| (s, 0, 0)));
        let ticks = simulate(&p, 0, &script);
        assert_eq!(ticks[0].0, 4);
        // Idle from t=1: nothing changes before t=61.
        assert!(
            ticks[1..61]
                .iter()
                .all(|&(n, r)| n == 4 && r == Reason::Cooldown)
        );
        assert_eq!(ticks[61], (3, Reason::ScaleIn));
        // One step per step_interval (10 s), never two at once.
        assert!(
            ticks[62..71]
                .iter()
                .all(|&(n, r)| n == 3 && r == Reason::StepWait)
        );
        assert_eq!(ticks[71], (2, Reason::ScaleIn));
        assert_eq!(ticks[81], (1, Reason::ScaleIn));
        assert_eq!(ticks[91], (0, Reason::ScaleIn));
        assert_eq!(ticks[100], (0, Reason::Steady));
        for pair in ticks.windows(2) {
            assert!(
                pair[0].0 - pair[1].0.min(pair[0].0) <= 1,
                "never more than one step in"
            );
        }
    }

    #[test]
    fn a_flapping_backlog_never_shrinks_the_pool() {
        let p = policy(0, 4);
        // A burst every 40 s (shorter than the 60 s idle time), nothing in between.
        let script: Vec<_> = (0..600)
            .map(|s| if s % 40 == 0 { (s, 30, 0) } else { (s, 0, 0) })
            .collect();
        let ticks = simulate(&p, 0, &script);
        assert!(ticks.iter().all(|&(n, _)| n == 4), "{ticks:?}");
    }

    #[test]
    fn a_trickle_keeps_one_worker_and_no_more() {
        let p = policy(0, 4);
        // One job every 20 s, each running 5 s.
        let script: Vec<_> = (0..300)
            .map(|s| match s % 20 {
                0 => (s, 1, 0),
                1..=5 => (s, 0, 1),
                _ => (s, 0, 0),
            })
            .collect();
        let ticks = simulate(&p, 0, &script);
        assert!(ticks.iter().all(|&(n, _)| n == 1), "{ticks:?}");
        // Once it stops, the last worker goes after the idle time.
        let mut script = script;
        script.extend((300..400).map(|s| (s, 0, 0)));
        let ticks = simulate(&p, 0, &script);
        assert_eq!(ticks.last().unwrap().0, 0);
    }

    #[test]
    fn min_above_zero_is_a_floor_scale_in_never_crosses() {
        let p = policy(2, 6);
        let mut script = vec![(0, 0, 0), (1, 40, 0)];
        script.extend((2..400).map(|s| (s, 0, 0)));
        let ticks = simulate(&p, 0, &script);
        assert_eq!(
            ticks[0],
            (2, Reason::OutOfBounds),
            "an empty pool fills to min at once"
        );
        assert_eq!(ticks[1], (5, Reason::ScaleOut));
        assert!(ticks.iter().all(|&(n, _)| n >= 2));
        assert_eq!(ticks.last().unwrap(), &(2, Reason::Steady));
    }

    #[test]
    fn a_pool_above_max_comes_back_inside_at_once() {
        let p = policy(0, 3);
        let ticks = simulate(&p, 7, &[(0, 100, 0)]);
        assert_eq!(ticks[0], (3, Reason::OutOfBounds));
    }

    #[test]
    fn new_need_during_cooldown_restarts_the_idle_clock() {
        let p = policy(0, 4);
        let mut script = vec![(0, 32, 0)];
        script.extend((1..50).map(|s| (s, 0, 0)));
        script.push((50, 0, 25)); // still needs all 4 at t=50
        script.extend((51..=111).map(|s| (s, 0, 0)));
        let ticks = simulate(&p, 0, &script);
        assert!(ticks[..111].iter().all(|&(n, _)| n == 4));
        assert_eq!(
            ticks[111],
            (3, Reason::ScaleIn),
            "60 s after the last need, not before"
        );
    }

    #[test]
    fn a_partial_surplus_shrinks_to_the_need_and_holds() {
        let p = policy(0, 4);
        let mut script = vec![(0, 32, 0)];
        script.extend((1..200).map(|s| (s, 0, 10))); // 10 running: need 2
        let ticks = simulate(&p, 0, &script);
        assert_eq!(ticks[61], (3, Reason::ScaleIn));
        assert_eq!(ticks[71], (2, Reason::ScaleIn));
        assert_eq!(ticks.last().unwrap(), &(2, Reason::Steady));
    }
}
