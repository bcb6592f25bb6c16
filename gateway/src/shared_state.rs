//! State that several gateway instances would have to share to act as one: the run journal,
//! idempotency keys and rate-limit buckets. Everything reaches it through [`SharedState`],
//! whose default, [`Embedded`], keeps the journal in SQLite and the rest in bounded
//! in-process caches; a deployment with several instances can put another implementation (a
//! distributed store) behind the same calls.

use crate::journal::{Journal, RunJournal};
use crate::limits::{Bucket, RateLimit};
use bytes::Bytes;
use moka::ops::compute::Op;
use moka::sync::Cache;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The state calls the request path makes.
pub trait SharedState: Send + Sync {
    /// Claims `key` for `ttl`: the first claim runs the event; later ones learn how it went.
    fn claim(&self, key: &str, ttl: Duration) -> Claim;

    /// Records how the claimed run ended: `Some` keeps the key (and the answer) until its
    /// time is up, `None` forgets the key so that the sender's retry runs the event again.
    /// A claim that is no longer this one's (it expired and was claimed anew) is left alone.
    fn settle(&self, key: &str, claim: u64, outcome: Option<Arc<FirstAnswer>>);

    /// Takes a token from the bucket named `bucket`, or says how long until there is one.
    fn take_token(&self, bucket: &str, rate: RateLimit) -> Result<(), Duration>;

    /// Puts back a token taken from `bucket` for a request that was refused after all.
    fn give_back_token(&self, bucket: &str, rate: RateLimit);

    /// Forgets `key` if it holds the answer of `run_id`: that run failed after the answer
    /// was given (an accepted run), so a repeat of the event should run it again.
    fn forget_run(&self, key: &str, run_id: &str);

    /// Where accepted runs are written before they are acknowledged.
    fn journal(&self) -> &dyn RunJournal;
}

/// What claiming an idempotency key found.
#[derive(Debug, Clone)]
pub enum Claim {
    /// Nobody had it: the caller runs the event and settles the claim with this number.
    Fresh(u64),
    /// The event already ran.
    Done(Arc<FirstAnswer>),
    /// The event is running now, for an earlier request.
    InProgress,
}

/// How the first run of an event was answered, to answer its repeats alike.
#[derive(Debug, Clone, PartialEq)]
pub struct FirstAnswer {
    pub run_id: Option<String>,
    pub status: u16,
    pub content_type: Option<String>,
    /// How the kept body is encoded (`gzip`, ...), as the first answer said.
    pub content_encoding: Option<String>,
    /// `None` when the answer was too large to keep: repeats get a plain duplicate notice.
    pub body: Option<Bytes>,
}

#[derive(Debug, Clone)]
enum Record {
    Running { claim: u64 },
    Done(Arc<FirstAnswer>),
}

#[derive(Debug, Clone)]
struct Remembered {
    record: Record,
    ttl: Duration,
}

/// Keys expire `ttl` after they were first claimed, whatever happens to them since.
struct UntilTtl;

impl moka::Expiry<String, Remembered> for UntilTtl {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Remembered,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// The embedded implementation: SQLite for the journal, moka caches bounded in bytes (keys)
/// and entries (buckets).
pub struct Embedded {
    journal: Journal,
    keys: Cache<String, Remembered>,
    buckets: Cache<String, Arc<Mutex<Bucket>>>,
    next_claim: AtomicU64,
}

/// Buckets idle this long are dropped; by then any sensible bucket has refilled, and a
/// dropped bucket comes back full, so forgetting it changes nothing.
const BUCKET_IDLE: Duration = Duration::from_secs(3600);
const MAX_BUCKETS: u64 = 1_000_000;

impl Embedded {
    pub fn new(journal: Journal, max_key_bytes: usize) -> Self {
        // Least recently used first: the default policy would refuse new keys once full,
        // which is the one thing an idempotency store must not do.
        let keys = Cache::builder()
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .max_capacity(max_key_bytes as u64)
            .weigher(|key: &String, value: &Remembered| {
                let answer = match &value.record {
                    Record::Done(answer) => answer.body.as_ref().map_or(0, Bytes::len) + 128,
                    Record::Running { .. } => 0,
                };
                u32::try_from(key.len() + answer + 64).unwrap_or(u32::MAX)
            })
            .expire_after(UntilTtl)
            .build();
        let buckets = Cache::builder()
            .max_capacity(MAX_BUCKETS)
            .time_to_idle(BUCKET_IDLE)
            .build();
        Self {
            journal,
            keys,
            buckets,
            next_claim: AtomicU64::new(1),
        }
    }
}

impl SharedState for Embedded {
    fn claim(&self, key: &str, ttl: Duration) -> Claim {
        let claim = self.next_claim.fetch_add(1, Ordering::Relaxed);
        let entry = self
            .keys
            .entry(key.to_string())
            .or_insert_with(|| Remembered {
                record: Record::Running { claim },
                ttl,
            });
        if entry.is_fresh() {
            return Claim::Fresh(claim);
        }
        match &entry.value().record {
            Record::Running { .. } => Claim::InProgress,
            Record::Done(answer) => Claim::Done(Arc::clone(answer)),
        }
    }

    fn settle(&self, key: &str, claim: u64, outcome: Option<Arc<FirstAnswer>>) {
        self.keys
            .entry(key.to_string())
            .and_compute_with(|current| match current.map(|entry| entry.into_value()) {
                Some(Remembered {
                    record: Record::Running { claim: holder },
                    ttl,
                }) if holder == claim => match outcome {
                    Some(answer) => Op::Put(Remembered {
                        record: Record::Done(answer),
                        ttl,
                    }),
                    None => Op::Remove,
                },
                _ => Op::Nop,
            });
    }

    fn take_token(&self, bucket: &str, rate: RateLimit) -> Result<(), Duration> {
        let now = Instant::now();
        let bucket = self
            .buckets
            .get_with_by_ref(bucket, || Arc::new(Mutex::new(Bucket::full(rate, now))));
        let mut bucket = bucket.lock().unwrap_or_else(|e| e.into_inner());
        bucket.take(rate, now)
    }

    fn give_back_token(&self, bucket: &str, rate: RateLimit) {
        if let Some(bucket) = self.buckets.get(bucket) {
            bucket
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .give_back(rate);
        }
    }

    fn forget_run(&self, key: &str, run_id: &str) {
        self.keys
            .entry(key.to_string())
            .and_compute_with(|current| match current.map(|entry| entry.into_value()) {
                Some(Remembered {
                    record: Record::Done(answer),
                    ..
                }) if answer.run_id.as_deref() == Some(run_id) => Op::Remove,
                _ => Op::Nop,
            });
    }

    fn journal(&self) -> &dyn RunJournal {
        &self.journal
    }
}

/// A claimed idempotency key that forgets itself unless settled: a request that ends in an
/// error, or whose caller hangs up, leaves the key free for the sender's retry.
pub struct PendingKey {
    state: Arc<dyn SharedState>,
    key: String,
    claim: u64,
    settled: bool,
}

impl PendingKey {
    pub fn new(state: Arc<dyn SharedState>, key: String, claim: u64) -> Self {
        Self {
            state,
            key,
            claim,
            settled: false,
        }
    }

    /// The key as stored.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Keeps the key, with the first answer given to repeats.
    pub fn keep(mut self, answer: FirstAnswer) {
        self.state
            .settle(&self.key, self.claim, Some(Arc::new(answer)));
        self.settled = true;
    }
}

impl Drop for PendingKey {
    fn drop(&mut self) {
        if !self.settled {
            self.state.settle(&self.key, self.claim, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embedded() -> Embedded {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(&dir.path().join("runs.db"), 16).unwrap();
        // The database's folder must outlive it; a test process is short.
        std::mem::forget(dir);
        Embedded::new(journal, 1 << 20)
    }

    fn answer(run_id: &str) -> FirstAnswer {
        FirstAnswer {
            run_id: Some(run_id.into()),
            status: 200,
            content_type: Some("application/json".into()),
            content_encoding: None,
            body: Some(Bytes::from_static(b"{}")),
        }
    }

    #[test]
    fn a_key_is_run_once_and_its_repeats_get_the_first_answer() {
        let state: Arc<dyn SharedState> = Arc::new(embedded());
        let Claim::Fresh(claim) = state.claim("w:k", Duration::from_secs(60)) else {
            panic!("the first claim is fresh");
        };
        assert!(matches!(
            state.claim("w:k", Duration::from_secs(60)),
            Claim::InProgress
        ));
        PendingKey::new(Arc::clone(&state), "w:k".into(), claim).keep(answer("run-1"));
        match state.claim("w:k", Duration::from_secs(60)) {
            Claim::Done(first) => assert_eq!(*first, answer("run-1")),
            other => panic!("expected the first answer, got {other:?}"),
        }
    }

    #[test]
    fn an_unsettled_claim_frees_the_key_for_a_retry() {
        let state: Arc<dyn SharedState> = Arc::new(embedded());
        let Claim::Fresh(claim) = state.claim("w:k", Duration::from_secs(60)) else {
            panic!("the first claim is fresh");
        };
        drop(PendingKey::new(Arc::clone(&state), "w:k".into(), claim));
        assert!(matches!(
            state.claim("w:k", Duration::from_secs(60)),
            Claim::Fresh(_)
        ));
    }

    #[test]
    fn a_stale_claim_does_not_overwrite_a_newer_one() {
        let state = embedded();
        let Claim::Fresh(old) = state.claim("w:k", Duration::from_secs(60)) else {
            panic!("fresh");
        };
        state.settle("w:k", old, None);
        let Claim::Fresh(new) = state.claim("w:k", Duration::from_secs(60)) else {
            panic!("fresh again");
        };
        state.settle("w:k", old, Some(Arc::new(answer("stale"))));
        assert!(matches!(
            state.claim("w:k", Duration::from_secs(60)),
            Claim::InProgress
        ));
        state.settle("w:k", new, None);
    }

    #[test]
    fn a_kept_key_is_forgotten_when_its_time_is_up() {
        let state: Arc<dyn SharedState> = Arc::new(embedded());
        let ttl = Duration::from_millis(200);
        let Claim::Fresh(claim) = state.claim("w:k", ttl) else {
            panic!("fresh");
        };
        let kept_at = Instant::now();
        PendingKey::new(Arc::clone(&state), "w:k".into(), claim).keep(answer("run-1"));
        loop {
            match state.claim("w:k", ttl) {
                Claim::Done(_) => assert!(kept_at.elapsed() < Duration::from_secs(10)),
                Claim::Fresh(_) => break,
                Claim::InProgress => panic!("a kept key is never in progress"),
            }
            std::thread::yield_now();
        }
        assert!(kept_at.elapsed() >= Duration::from_millis(150));
    }
}
