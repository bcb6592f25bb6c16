//! Validation of the intake rules shared by `gateway.yaml` and workflow files: address
//! blocks, rate and concurrency limits, and idempotency keys.

use super::file::{CallerLimitsFile, IdempotencyFile};
use super::Problems;
use crate::limits::{CallerLimits, RateLimit};
use crate::mapping::Pointer;
use crate::network::Cidr;
use std::time::Duration;

/// Where a workflow finds the key that identifies an event across the sender's retries.
#[derive(Debug, Clone)]
pub enum IdempotencySource {
    /// A request header, lowercased.
    Header(String),
    Pointer(Pointer),
}

#[derive(Debug, Clone)]
pub struct Idempotency {
    pub source: IdempotencySource,
    pub ttl: Duration,
    /// Events without a key are refused rather than run unchecked.
    pub required: bool,
}

/// Longest idempotency window: a week.
const MAX_IDEMPOTENCY_TTL_SECONDS: u64 = 7 * 24 * 60 * 60;

/// Address blocks, each reported at `location[index]` when it does not parse.
pub(super) fn cidrs(listed: &[String], location: &str, problems: &mut Problems<'_>) -> Vec<Cidr> {
    listed
        .iter()
        .enumerate()
        .filter_map(|(index, text)| {
            text.parse::<Cidr>()
                .map_err(|message| problems.add(format!("{location}[{index}]"), message))
                .ok()
        })
        .collect()
}

pub(super) fn caller_limits(
    file: Option<&CallerLimitsFile>,
    location: &str,
    problems: &mut Problems<'_>,
) -> CallerLimits {
    let Some(file) = file else {
        return CallerLimits::default();
    };
    if let Some(max) = file.max_concurrent {
        problems.in_range(&format!("{location}.max_concurrent"), max, 1..=1_000_000);
    }
    let rate = match (file.rate_per_second, file.burst) {
        (None, Some(_)) => {
            problems.add(format!("{location}.burst"), "needs `rate_per_second`");
            None
        }
        (None, None) => None,
        (Some(per_second), burst) => rate_limit(per_second, burst, location, problems),
    };
    CallerLimits {
        rate,
        max_concurrent: file.max_concurrent,
    }
}

fn rate_limit(
    per_second: f64,
    burst: Option<u32>,
    location: &str,
    problems: &mut Problems<'_>,
) -> Option<RateLimit> {
    // At least one request an hour, so that an idle bucket refills within the hour the
    // shared state keeps it.
    if !(per_second.is_finite() && (1.0 / 3600.0..=1_000_000.0).contains(&per_second)) {
        problems.add(
            format!("{location}.rate_per_second"),
            format!("{per_second} is outside 0.0003 (one an hour)..=1000000"),
        );
        return None;
    }
    let burst = burst.unwrap_or_else(|| per_second.ceil().max(1.0) as u32);
    problems.in_range(&format!("{location}.burst"), burst, 1..=1_000_000);
    if f64::from(burst) / per_second > 3600.0 {
        problems.add(
            format!("{location}.burst"),
            "takes more than an hour to refill; lower it or raise the rate",
        );
    }
    Some(RateLimit { per_second, burst })
}

pub(super) fn idempotency(
    file: Option<&IdempotencyFile>,
    problems: &mut Problems<'_>,
) -> Option<Idempotency> {
    let file = file?;
    problems.in_range(
        "idempotency.ttl_seconds",
        file.ttl_seconds,
        1..=MAX_IDEMPOTENCY_TTL_SECONDS,
    );
    let source = match (&file.header, &file.pointer) {
        (Some(header), None) => match http::HeaderName::from_bytes(header.trim().as_bytes()) {
            Ok(name) => IdempotencySource::Header(name.as_str().to_string()),
            Err(_) => {
                problems.add(
                    "idempotency.header",
                    format!("{header:?} is not a header name"),
                );
                return None;
            }
        },
        (None, Some(pointer)) => match Pointer::parse(pointer) {
            Ok(pointer) => IdempotencySource::Pointer(pointer),
            Err(message) => {
                problems.add("idempotency.pointer", message);
                return None;
            }
        },
        _ => {
            problems.add("idempotency", "give exactly one of `header` and `pointer`");
            return None;
        }
    };
    Some(Idempotency {
        source,
        ttl: Duration::from_secs(file.ttl_seconds),
        required: file.required,
    })
}
