//! Rate and concurrency limits, per workflow and per API key.
//!
//! A rate is a token bucket: `burst` requests may come at once, then one more every
//! `1 / per_second` seconds. The buckets are shared state (see [`crate::shared_state`]), so
//! several gateways could one day share them. A concurrency limit counts the requests in
//! progress in this process; a [`Permit`] holds one place until it is dropped, however the
//! request ends.

use crate::error::GatewayError;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

/// The limits on one workflow, or on one API key.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CallerLimits {
    pub rate: Option<RateLimit>,
    pub max_concurrent: Option<usize>,
}

/// A token bucket's state.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    pub fn full(rate: RateLimit, now: Instant) -> Self {
        Self {
            tokens: f64::from(rate.burst),
            refilled: now,
        }
    }

    /// Takes one token, or says how long until one is there.
    pub fn take(&mut self, rate: RateLimit, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(f64::from(rate.burst));
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64(
            (1.0 - self.tokens) / rate.per_second,
        ))
    }
}

impl Bucket {
    /// Puts back a token taken for a request that another limit then refused.
    pub fn give_back(&mut self, rate: RateLimit) {
        self.tokens = (self.tokens + 1.0).min(f64::from(rate.burst));
    }
}

/// The 429 for a request over a limit; Retry-After is whole seconds, at least one.
pub fn rate_limited(scope: &'static str, wait: Duration) -> GatewayError {
    GatewayError::RateLimited {
        scope,
        retry_after_seconds: wait.as_secs_f64().ceil().max(1.0) as u64,
    }
}

/// Requests in progress against one concurrency limit.
#[derive(Debug, Default)]
pub struct Gauge {
    in_progress: AtomicUsize,
}

impl Gauge {
    /// A place among `max`, or `None` when all are taken.
    pub fn enter(self: &Arc<Self>, max: usize) -> Option<Permit> {
        let taken = self
            .in_progress
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                (current < max).then_some(current + 1)
            });
        taken.ok().map(|_| Permit {
            gauge: Arc::clone(self),
        })
    }
}

/// One place under a concurrency limit, given back when dropped.
#[derive(Debug)]
pub struct Permit {
    gauge: Arc<Gauge>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gauge.in_progress.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The gauges of API keys, by key name. They outlive configuration reloads, so a reload
/// does not forget the requests already in progress.
#[derive(Debug, Default)]
pub struct KeyGauges {
    by_name: Mutex<HashMap<String, Arc<Gauge>>>,
}

impl KeyGauges {
    pub fn of(&self, name: &str) -> Arc<Gauge> {
        let mut by_name = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(by_name.entry(name.to_string()).or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let rate = RateLimit {
            per_second: 2.0,
            burst: 3,
        };
        let start = Instant::now();
        let mut bucket = Bucket::full(rate, start);
        for _ in 0..3 {
            assert!(bucket.take(rate, start).is_ok());
        }
        let wait = bucket.take(rate, start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(bucket
            .take(rate, start + Duration::from_millis(500))
            .is_ok());
        assert!(bucket
            .take(rate, start + Duration::from_millis(600))
            .is_err());
        // A long quiet spell refills to the burst, no further.
        let later = start + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(bucket.take(rate, later).is_ok());
        }
        assert!(bucket.take(rate, later).is_err());
    }

    #[test]
    fn a_gauge_gives_places_back_when_permits_drop() {
        let gauge = Arc::new(Gauge::default());
        let first = gauge.enter(2).unwrap();
        let _second = gauge.enter(2).unwrap();
        assert!(gauge.enter(2).is_none());
        drop(first);
        assert!(gauge.enter(2).is_some());
    }
}
