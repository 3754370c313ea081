//! A worker's memory budget: the bytes that the inputs of the jobs in hand may hold at once.
//! A job's input reader takes a [`Reservation`] and grows it before every allocation, so an
//! input too big for the budget fails `input_too_large` as soon as it outgrows it, before the
//! memory is touched, and the bytes go back when the reservation is dropped (the job is done
//! with its table).
//!
//! When the budget is held by other jobs, only the oldest reservation waits for memory to come
//! back; a younger one fails `memory_busy` (retryable) at once. Waiting jobs then never wait on
//! each other, so the budget cannot deadlock: whoever the oldest waits for is running.

use crate::error::{ErrorCode, JobError};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// The budget, shared by every job of one worker.
#[derive(Debug)]
pub struct MemoryBudget {
    total: u64,
    state: Mutex<State>,
    released: Notify,
}

#[derive(Debug, Default)]
struct State {
    held: u64,
    /// Tickets of live reservations; the smallest is the oldest.
    live: BTreeSet<u64>,
    next_ticket: u64,
}

/// What one job holds of its worker's budget; released when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Option<Arc<MemoryBudget>>,
    ticket: u64,
    held: u64,
}

impl MemoryBudget {
    pub fn new(total: u64) -> Arc<Self> {
        Arc::new(Self {
            total,
            state: Mutex::new(State::default()),
            released: Notify::new(),
        })
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes held by all reservations now.
    pub fn held(&self) -> u64 {
        self.lock().held
    }

    /// A reservation holding nothing yet, younger than every live one.
    pub fn reserve(self: &Arc<Self>) -> Reservation {
        let mut state = self.lock();
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.live.insert(ticket);
        Reservation {
            budget: Some(self.clone()),
            ticket,
            held: 0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a few integers updated in one step each: a panic cannot leave it torn.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Reservation {
    /// A reservation with no budget behind it (tools, tests): every growth succeeds.
    pub fn unlimited() -> Self {
        Self {
            budget: None,
            ticket: 0,
            held: 0,
        }
    }

    /// Bytes this reservation holds.
    pub fn held(&self) -> u64 {
        self.held
    }

    /// Grows the reservation to `bytes` if the budget has that much free now; `false` (and
    /// nothing taken) if not. For growth that is welcome but not needed.
    pub fn try_grow_to(&mut self, bytes: u64) -> bool {
        let Some(budget) = &self.budget else {
            self.held = self.held.max(bytes);
            return true;
        };
        if bytes <= self.held {
            return true;
        }
        let mut state = budget.lock();
        let extra = bytes - self.held;
        if budget.total - state.held < extra {
            return false;
        }
        state.held += extra;
        self.held = bytes;
        true
    }

    /// Gives back all but `bytes` (nothing when it holds no more than that).
    pub fn shrink_to(&mut self, bytes: u64) {
        if bytes >= self.held {
            return;
        }
        if let Some(budget) = &self.budget {
            budget.lock().held -= self.held - bytes;
            budget.released.notify_waiters();
        }
        self.held = bytes;
    }

    /// Grows the reservation to `bytes` (nothing when it holds that much already).
    /// `input_too_large` when `bytes` is more than the whole budget; `memory_busy` when other
    /// jobs hold what is missing and this is not the oldest reservation (which waits instead).
    pub async fn grow_to(&mut self, bytes: u64) -> Result<(), JobError> {
        let Some(budget) = self.budget.clone() else {
            self.held = self.held.max(bytes);
            return Ok(());
        };
        if bytes <= self.held {
            return Ok(());
        }
        if bytes > budget.total {
            return Err(JobError::new(
                ErrorCode::InputTooLarge,
                format!(
                    "the input needs more than {bytes} bytes; this worker's memory budget is {}",
                    budget.total
                ),
            ));
        }
        loop {
            let released = budget.released.notified();
            tokio::pin!(released);
            {
                let mut state = budget.lock();
                let extra = bytes - self.held;
                if budget.total - state.held >= extra {
                    state.held += extra;
                    self.held = bytes;
                    return Ok(());
                }
                if state.live.first() != Some(&self.ticket) {
                    return Err(JobError::new(
                        ErrorCode::MemoryBusy,
                        format!(
                            "the input needs {bytes} bytes and other jobs hold {} of this \
                             worker's {}-byte memory budget",
                            state.held - self.held,
                            budget.total
                        ),
                    ));
                }
                // Registered before the lock goes, so a release in between still wakes us.
                released.as_mut().enable();
            }
            released.await;
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            let mut state = budget.lock();
            state.held -= self.held;
            state.live.remove(&self.ticket);
            drop(state);
            budget.released.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn growth_past_the_whole_budget_is_input_too_large_and_takes_nothing() {
        let budget = MemoryBudget::new(1000);
        let mut r = budget.reserve();
        r.grow_to(600).await.unwrap();
        let e = r.grow_to(1001).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::InputTooLarge, "{}", e.message);
        assert_eq!((r.held(), budget.held()), (600, 600));
        drop(r);
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn a_younger_job_meeting_a_full_budget_is_busy_and_the_oldest_waits_for_release() {
        let budget = MemoryBudget::new(1000);
        let mut oldest = budget.reserve();
        let mut younger = budget.reserve();
        younger.grow_to(700).await.unwrap();
        oldest.grow_to(200).await.unwrap();
        let mut youngest = budget.reserve();
        let e = youngest.grow_to(200).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::MemoryBusy, "{}", e.message);
        // The oldest waits while the younger one holds the memory…
        let waiting = tokio::spawn(async move { oldest.grow_to(900).await.map(|_| oldest) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        // …and gets it once the younger one is done.
        drop(younger);
        let oldest = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the release")
            .unwrap()
            .unwrap();
        assert_eq!((oldest.held(), budget.held()), (900, 900));
    }

    #[tokio::test]
    async fn optional_growth_takes_only_what_is_free_and_shrinking_gives_back() {
        let budget = MemoryBudget::new(1000);
        let mut a = budget.reserve();
        let mut b = budget.reserve();
        assert!(a.try_grow_to(800));
        assert!(!b.try_grow_to(300));
        assert_eq!(b.held(), 0);
        a.shrink_to(500);
        assert!(b.try_grow_to(300));
        assert_eq!(budget.held(), 800);
    }

    #[tokio::test]
    async fn an_unlimited_reservation_always_grows() {
        let mut r = Reservation::unlimited();
        r.grow_to(u64::MAX).await.unwrap();
        assert_eq!(r.held(), u64::MAX);
    }
}
