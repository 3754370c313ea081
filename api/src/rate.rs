//! Token buckets by key: per tenant for authenticated requests, per client address for failed
//! authentication attempts. Memory stays bounded: a bucket that has refilled is forgotten.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Buckets kept before full ones (the same as no bucket) are dropped.
const PRUNE_ABOVE: usize = 10_000;

/// A token bucket per key: `burst` tokens at once, refilled at `per_second`.
#[derive(Clone)]
pub struct RateLimiter<K> {
    per_second: f64,
    burst: f64,
    buckets: Arc<Mutex<HashMap<K, (f64, Instant)>>>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(per_second: f64, burst: u32) -> Self {
        Self {
            per_second,
            burst: f64::from(burst.max(1)),
            buckets: Arc::default(),
        }
    }

    /// Takes one token, or says how long until one is there.
    pub fn take<Q>(&self, key: &Q) -> Result<(), Duration>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.with_bucket(key, |tokens| {
            if *tokens >= 1.0 {
                *tokens -= 1.0;
            }
        })
    }

    /// Whether a token is there (taking none), or how long until one is.
    pub fn check<Q>(&self, key: &Q) -> Result<(), Duration>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.with_bucket(key, |_| {})
    }

    /// Spends a token that [`check`](Self::check) found, even if concurrent spenders emptied
    /// the bucket meanwhile: it may go as far as `burst` into debt, which then takes as long
    /// to refill.
    pub fn charge<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let burst = self.burst;
        let _ = self.with_bucket(key, |tokens| *tokens = (*tokens - 1.0).max(-burst));
    }

    /// Spends `n` more tokens after a [`take`](Self::take) that let a request in: a batch of `n`
    /// jobs costs `n`, not one. The bucket may go into debt by as much, which then takes as long
    /// to refill, so a tenant's average rate in jobs holds whatever size its batches are.
    pub fn charge_n<Q>(&self, key: &Q, n: usize)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let _ = self.with_bucket(key, |tokens| *tokens -= n as f64);
    }

    /// Refills the key's bucket, says whether it held a token, then lets `spend` change it.
    fn with_bucket<Q>(&self, key: &Q, spend: impl FnOnce(&mut f64)) -> Result<(), Duration>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate limiter lock");
        if buckets.len() >= PRUNE_ABOVE && !buckets.contains_key(key) {
            buckets.retain(|_, (tokens, at)| self.refilled(*tokens, *at, now) < self.burst);
        }
        if !buckets.contains_key(key) {
            buckets.insert(key.to_owned(), (self.burst, now));
        }
        let (tokens, at) = buckets.get_mut(key).expect("just inserted");
        *tokens = self.refilled(*tokens, *at, now);
        *at = now;
        let answer = if *tokens >= 1.0 {
            Ok(())
        } else if self.per_second > 0.0 {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.per_second))
        } else {
            Err(Duration::from_secs(3600))
        };
        spend(tokens);
        answer
    }

    fn refilled(&self, tokens: f64, at: Instant, now: Instant) -> f64 {
        (tokens + now.duration_since(at).as_secs_f64() * self.per_second).min(self.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_refills_per_tenant() {
        let limiter = RateLimiter::<String>::new(10.0, 3);
        for _ in 0..3 {
            assert!(limiter.take("a").is_ok());
        }
        let wait = limiter.take("a").unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert!(limiter.take("b").is_ok(), "tenants have separate buckets");
        std::thread::sleep(Duration::from_millis(120));
        assert!(limiter.take("a").is_ok());
    }

    #[test]
    fn check_takes_nothing_and_charges_past_empty_become_debt() {
        let limiter = RateLimiter::<u32>::new(1.0, 2);
        for _ in 0..5 {
            assert!(limiter.check(&7).is_ok(), "checking is free");
        }
        // Three attempts checked at once, all failing: the third is charged as debt.
        for _ in 0..3 {
            limiter.charge(&7);
        }
        let wait = limiter.check(&7).unwrap_err();
        assert!(
            wait > Duration::from_millis(1900) && wait <= Duration::from_secs(2),
            "one token owed and one to come: {wait:?}"
        );
        assert!(limiter.check(&8).is_ok(), "other keys are untouched");
    }

    #[test]
    fn a_batch_spends_a_token_per_job_and_its_debt_refills_at_the_rate() {
        let limiter = RateLimiter::<u32>::new(100.0, 10);
        limiter.take(&1).unwrap();
        limiter.charge_n(&1, 49);
        let wait = limiter.take(&1).unwrap_err();
        assert!(
            wait > Duration::from_millis(390) && wait <= Duration::from_millis(410),
            "40 tokens owed, one more wanted, at 100 a second: {wait:?}"
        );
    }

    #[test]
    fn full_buckets_are_forgotten_once_there_are_many() {
        let limiter = RateLimiter::<usize>::new(1000.0, 1);
        for key in 0..PRUNE_ABOVE {
            limiter.take(&key).unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
        limiter.take(&PRUNE_ABOVE).unwrap();
        assert_eq!(limiter.buckets.lock().unwrap().len(), 1);
    }
}
