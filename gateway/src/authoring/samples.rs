//! Samples: the last events that reached a workflow, kept so an author can see what a sender
//! really sends and discover its fields.
//!
//! Bounded three ways: events per workflow, body bytes per event, and body bytes over every
//! workflow (a shared budget; a workflow that needs room gives up its own oldest events).
//! Credentials never enter a sample: headers and query parameters that carry keys,
//! signatures, tokens or cookies are replaced before the sample is stored.

use crate::config::SampleSettings;
use base64::Engine as _;
use bytes::Bytes;
use http::HeaderMap;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// What stands in for a secret value.
pub const REDACTED: &str = "[redacted]";

/// Whether a header or query parameter with this name carries a credential: the same test
/// the forwarding rules use, so what is never passed on is never shown either.
pub fn is_secret_name(name: &str) -> bool {
    crate::forward::looks_secret(name)
}

/// Which URL an event came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleSource {
    Test,
    Production,
}

/// One kept event, secrets redacted.
#[derive(Debug, Serialize)]
pub struct Sample {
    pub id: String,
    pub received_at: String,
    pub source: SampleSource,
    pub method: String,
    /// Repeats kept apart and credentials replaced; shown as text with repeats joined, and
    /// sent as they are when the sample is replayed.
    #[serde(serialize_with = "joined_headers")]
    pub headers: HeaderMap,
    pub query: Map<String, Value>,
    pub body_bytes: usize,
    pub body_truncated: bool,
    /// `utf8` when the kept body is text, otherwise `base64`.
    pub body_encoding: &'static str,
    /// The kept bytes, shown as `body` in `body_encoding`; held once, as received.
    #[serde(rename = "body", serialize_with = "body_text")]
    pub raw: Bytes,
}

fn joined_headers<S: serde::Serializer>(
    headers: &HeaderMap,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&redacted_headers(headers), serializer)
}

fn body_text<S: serde::Serializer>(raw: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&shown_body(raw))
}

/// A body as text when it is UTF-8, otherwise as base64.
fn shown_body(raw: &[u8]) -> String {
    match std::str::from_utf8(raw) {
        Ok(text) => text.to_string(),
        Err(_) => base64::engine::general_purpose::STANDARD.encode(raw),
    }
}

/// What a request brings that a sample keeps.
pub struct Arrival<'a> {
    pub source: SampleSource,
    pub method: &'a str,
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    /// The query parameter that carries the workflow's API key, if it takes one there.
    pub key_param: Option<&'a str>,
    pub body: &'a Bytes,
}

impl Sample {
    fn new(arrival: &Arrival<'_>, max_body_bytes: usize) -> Self {
        let body_bytes = arrival.body.len();
        let raw = cut(arrival.body, max_body_bytes);
        let body_encoding = match std::str::from_utf8(&raw) {
            Ok(_) => "utf8",
            Err(_) => "base64",
        };
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            received_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            source: arrival.source,
            method: arrival.method.to_string(),
            headers: redacted_header_map(arrival.headers),
            query: redacted_query(arrival.query, arrival.key_param),
            body_bytes,
            body_truncated: raw.len() < body_bytes,
            body_encoding,
            raw,
        }
    }

    /// Bytes this sample holds against the budget: the body, and the headers and query,
    /// which a caller can make large too.
    fn cost(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        let query: usize = self
            .query
            .iter()
            .map(|(name, value)| name.len() + value.as_str().map_or(0, str::len))
            .sum();
        self.raw.len() + headers + query
    }

    /// The kept body as text, as the admin API shows it.
    pub fn body_text(&self) -> String {
        shown_body(&self.raw)
    }
}

/// The first `limit` bytes of a body. A UTF-8 body is cut at a character boundary, so the
/// kept part still shows as text.
fn cut(body: &Bytes, limit: usize) -> Bytes {
    if body.len() <= limit {
        return body.clone();
    }
    let kept = body.slice(..limit);
    match std::str::from_utf8(&kept) {
        Err(error) if error.error_len().is_none() => kept.slice(..error.valid_up_to()),
        _ => kept,
    }
}

/// Headers with credentials replaced, repeats kept apart.
fn redacted_header_map(headers: &HeaderMap) -> HeaderMap {
    let mut redacted = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let value = if is_secret_name(name.as_str()) {
            http::HeaderValue::from_static(REDACTED)
        } else {
            value.clone()
        };
        redacted.append(name.clone(), value);
    }
    redacted
}

/// Headers as text, repeated ones joined, credentials replaced.
pub fn redacted_headers(headers: &HeaderMap) -> Map<String, Value> {
    let mut map = Map::new();
    for name in headers.keys() {
        let value = if is_secret_name(name.as_str()) {
            REDACTED.to_string()
        } else {
            headers
                .get_all(name)
                .iter()
                .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        };
        map.insert(name.as_str().to_string(), Value::String(value));
    }
    map
}

/// Query parameters (the first of each name), credentials replaced: those whose names
/// look secret, and `key_param`, the one the workflow takes an API key from.
pub fn redacted_query(query: Option<&str>, key_param: Option<&str>) -> Map<String, Value> {
    let mut map = Map::new();
    for (name, value) in crate::pipeline::parse_query(query) {
        let value = if is_secret_name(&name) || Some(name.as_str()) == key_param {
            REDACTED.to_string()
        } else {
            value
        };
        map.entry(name).or_insert(Value::String(value));
    }
    map
}

/// Body bytes held by samples over every workflow.
pub struct SampleBudget {
    limit: AtomicUsize,
    used: AtomicUsize,
}

impl SampleBudget {
    pub fn new(limit: usize) -> Self {
        Self {
            limit: AtomicUsize::new(limit),
            used: AtomicUsize::new(0),
        }
    }

    /// A new limit applies to samples kept from now on; those already kept stay until they
    /// are pushed out.
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Release);
    }

    fn try_take(&self, bytes: usize) -> bool {
        let limit = self.limit.load(Ordering::Acquire);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// The last samples of one workflow, newest last.
pub struct SampleRing {
    settings: Mutex<SampleSettings>,
    samples: Mutex<VecDeque<Arc<Sample>>>,
    budget: Arc<SampleBudget>,
    /// Set once the workflow is gone: a request still in flight for it keeps nothing.
    retired: AtomicBool,
}

impl SampleRing {
    pub fn new(settings: SampleSettings, budget: Arc<SampleBudget>) -> Self {
        Self {
            settings: Mutex::new(settings),
            samples: Mutex::new(VecDeque::new()),
            budget,
            retired: AtomicBool::new(false),
        }
    }

    /// Keeps an event, making room by dropping this workflow's oldest. Returns false when
    /// samples are off or the shared budget has no room even after that.
    pub fn record(&self, arrival: &Arrival<'_>) -> bool {
        let settings = *lock(&self.settings);
        if settings.per_workflow == 0 {
            return false;
        }
        let sample = Sample::new(arrival, settings.max_body_bytes);
        let cost = sample.cost();

        let mut samples = lock(&self.samples);
        if self.retired.load(Ordering::Acquire) {
            return false;
        }
        while samples.len() >= settings.per_workflow {
            self.drop_oldest(&mut samples);
        }
        while !self.budget.try_take(cost) {
            if samples.is_empty() {
                tracing::warn!(
                    sample.bytes = cost,
                    "sample not kept: the sample budget is full"
                );
                return false;
            }
            self.drop_oldest(&mut samples);
        }
        samples.push_back(Arc::new(sample));
        true
    }

    /// Newest first.
    pub fn list(&self) -> Vec<Arc<Sample>> {
        lock(&self.samples).iter().rev().cloned().collect()
    }

    pub fn len(&self) -> usize {
        lock(&self.samples).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every sample for good: the workflow is gone.
    pub fn retire(&self) {
        let mut samples = lock(&self.samples);
        self.retired.store(true, Ordering::Release);
        while !samples.is_empty() {
            self.drop_oldest(&mut samples);
        }
    }

    pub fn clear(&self) {
        let mut samples = lock(&self.samples);
        while !samples.is_empty() {
            self.drop_oldest(&mut samples);
        }
    }

    /// Applies new limits; extra samples go, oldest first.
    pub fn resize(&self, settings: SampleSettings) {
        *lock(&self.settings) = settings;
        let mut samples = lock(&self.samples);
        while samples.len() > settings.per_workflow {
            self.drop_oldest(&mut samples);
        }
    }

    fn drop_oldest(&self, samples: &mut VecDeque<Arc<Sample>>) {
        if let Some(oldest) = samples.pop_front() {
            self.budget.give_back(oldest.cost());
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(per_workflow: usize, max_body_bytes: usize) -> SampleSettings {
        SampleSettings {
            per_workflow,
            max_body_bytes,
            max_total_bytes: 1 << 20,
        }
    }

    fn arrive(ring: &SampleRing, body: &'static [u8], headers: &HeaderMap) -> bool {
        ring.record(&Arrival {
            source: SampleSource::Test,
            method: "POST",
            headers,
            query: Some("api_key=abc&page=2"),
            key_param: None,
            body: &Bytes::from_static(body),
        })
    }

    #[test]
    fn keeps_the_newest_within_count_and_redacts_credentials() {
        let budget = Arc::new(SampleBudget::new(1 << 20));
        let ring = SampleRing::new(settings(2, 1024), budget);
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", "k".parse().unwrap());
        headers.insert("x-hub-signature-256", "sha256=00".parse().unwrap());
        headers.insert("x-github-event", "push".parse().unwrap());

        for body in [&b"{\"n\":1}"[..], b"{\"n\":2}", b"{\"n\":3}"] {
            let body: &'static [u8] = Box::leak(body.to_vec().into_boxed_slice());
            assert!(arrive(&ring, body, &headers));
        }

        let kept = ring.list();
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].body_text(), "{\"n\":3}");
        assert_eq!(kept[1].body_text(), "{\"n\":2}");
        assert_eq!(kept[0].headers["x-api-key"], REDACTED);
        assert_eq!(kept[0].headers["x-hub-signature-256"], REDACTED);
        assert_eq!(kept[0].headers["x-github-event"], "push");
        assert_eq!(kept[0].query["api_key"], REDACTED);
        assert_eq!(kept[0].query["page"], "2");
    }

    #[test]
    fn long_bodies_are_cut_and_binary_bodies_encoded() {
        let ring = SampleRing::new(settings(5, 4), Arc::new(SampleBudget::new(1 << 20)));
        assert!(arrive(&ring, b"abcdefgh", &HeaderMap::new()));
        assert!(arrive(&ring, b"\xff\xfe", &HeaderMap::new()));
        assert!(arrive(&ring, "aé€".as_bytes(), &HeaderMap::new()));

        // Cut inside "€": the text up to the last whole character is kept.
        let text = &ring.list()[0];
        assert_eq!(
            (text.body_text().as_str(), text.body_encoding),
            ("aé", "utf8")
        );
        let kept = &ring.list()[1..];
        assert_eq!(kept[1].body_text(), "abcd");
        assert!(kept[1].body_truncated);
        assert_eq!(kept[1].body_bytes, 8);
        assert_eq!(kept[0].body_encoding, "base64");
        assert_eq!(kept[0].body_text(), "//4=");
    }

    #[test]
    fn the_shared_budget_evicts_own_oldest_then_refuses() {
        // Each sample costs 32 bytes: a 10-byte body and 22 bytes of query.
        let budget = Arc::new(SampleBudget::new(64));
        let first = SampleRing::new(settings(10, 1024), Arc::clone(&budget));
        let second = SampleRing::new(settings(10, 1024), Arc::clone(&budget));

        assert!(arrive(&first, b"0123456789", &HeaderMap::new()));
        assert!(arrive(&second, b"0123456789", &HeaderMap::new()));
        // The budget is full; the second ring can only make room from its own samples.
        assert!(arrive(&second, b"abcdefghij", &HeaderMap::new()));
        assert_eq!(first.len(), 1);
        assert_eq!(second.list()[0].body_text(), "abcdefghij");
        assert_eq!(second.len(), 1);

        let third = SampleRing::new(settings(10, 1024), Arc::clone(&budget));
        assert!(!arrive(&third, b"0123456789", &HeaderMap::new()));
        first.clear();
        assert!(arrive(&third, b"0123456789", &HeaderMap::new()));

        // A retired ring gives its bytes back and keeps nothing more.
        second.retire();
        assert!(!arrive(&second, b"0123456789", &HeaderMap::new()));
        assert!(arrive(&first, b"0123456789", &HeaderMap::new()));
    }
}
