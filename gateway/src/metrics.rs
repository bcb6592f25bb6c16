//! Latency histograms with fixed buckets, kept in atomics so that recording on the request
//! path never locks and never allocates, and the phases of a request they are kept for.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds: 50 µs to 30 s, 1-2.5-5 per decade (backend
/// timeouts are counted in tens of seconds).
const BOUNDS_MICROS: [u64; 19] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 25_000_000, 50_000_000,
];

/// A Prometheus histogram: counts per bucket (not cumulative; summed when rendered), the
/// last one past every bound, and the sum of what was observed.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS_MICROS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let index = BOUNDS_MICROS.partition_point(|bound| *bound < micros);
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// How many observations there were.
    pub fn count(&self) -> u64 {
        self.buckets
            .iter()
            .map(|bucket| bucket.load(Ordering::Relaxed))
            .sum()
    }

    /// Writes the `_bucket`, `_sum` and `_count` samples; `labels` are written before `le`
    /// and end with a comma when not empty.
    pub fn render(&self, text: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, bucket) in BOUNDS_MICROS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = *bound as f64 / 1e6;
            let _ = writeln!(text, "{name}_bucket{{{labels}le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.buckets[BOUNDS_MICROS.len()].load(Ordering::Relaxed);
        let _ = writeln!(text, "{name}_bucket{{{labels}le=\"+Inf\"}} {cumulative}");
        let seconds = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let labels = match labels.trim_end_matches(',') {
            "" => String::new(),
            labels => format!("{{{labels}}}"),
        };
        let _ = writeln!(text, "{name}_sum{labels} {seconds}");
        let _ = writeln!(text, "{name}_count{labels} {cumulative}");
    }
}

/// A step of a request on a workflow's URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The API key check.
    Auth,
    /// The provider's signature check.
    Signature,
    /// Reading the body off the connection.
    Body,
    /// Decoding the body and checking it against the schema.
    Validation,
    Mapping,
    /// The script of a synchronous request.
    Script,
    /// From sending to the backend until its answer's header arrives (synchronous forwarding).
    Forward,
    /// The whole request, from its first byte to its log line.
    Total,
}

impl Phase {
    /// Every phase but [`Phase::Total`], which has a family of its own.
    pub const STEPS: [Phase; 7] = [
        Phase::Auth,
        Phase::Signature,
        Phase::Body,
        Phase::Validation,
        Phase::Mapping,
        Phase::Script,
        Phase::Forward,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Auth => "auth",
            Phase::Signature => "signature",
            Phase::Body => "body",
            Phase::Validation => "validation",
            Phase::Mapping => "mapping",
            Phase::Script => "script",
            Phase::Forward => "forward",
            Phase::Total => "total",
        }
    }
}

/// One histogram per phase, allocated on a workflow's first observation so that thousands of
/// idle workflows cost a pointer each.
#[derive(Default)]
pub struct PhaseLatency {
    histograms: OnceLock<Box<[Histogram; 8]>>,
}

impl PhaseLatency {
    pub fn observe(&self, phase: Phase, elapsed: Duration) {
        let histograms = self
            .histograms
            .get_or_init(|| Box::new(std::array::from_fn(|_| Histogram::default())));
        histograms[phase as usize].observe(elapsed);
    }

    /// The phase's histogram, if the workflow has observed anything yet.
    pub fn get(&self, phase: Phase) -> Option<&Histogram> {
        self.histograms
            .get()
            .map(|histograms| &histograms[phase as usize])
    }
}

/// Runs `step` and records how long it took under `phase`, however it ended; with no
/// `latency` (a request on a test URL), only runs it.
pub fn timed<T>(latency: Option<&PhaseLatency>, phase: Phase, step: impl FnOnce() -> T) -> T {
    let Some(latency) = latency else {
        return step();
    };
    let started = std::time::Instant::now();
    let outcome = step();
    latency.observe(phase, started.elapsed());
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_micros(50));
        histogram.observe(Duration::from_micros(51));
        histogram.observe(Duration::from_secs(60));
        histogram.observe(Duration::from_secs(4));
        let mut text = String::new();
        histogram.render(&mut text, "h", "w=\"a\",");

        assert!(
            text.contains("h_bucket{w=\"a\",le=\"0.00005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("h_bucket{w=\"a\",le=\"0.0001\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("h_bucket{w=\"a\",le=\"50\"} 3\n"), "{text}");
        assert!(text.contains("h_bucket{w=\"a\",le=\"2.5\"} 2\n"), "{text}");
        assert!(text.contains("h_bucket{w=\"a\",le=\"5\"} 3\n"), "{text}");
        assert!(text.contains("h_bucket{w=\"a\",le=\"+Inf\"} 4\n"), "{text}");
        assert!(text.contains("h_count{w=\"a\"} 4\n"), "{text}");
        assert!(text.contains("h_sum{w=\"a\"} 64.000101\n"), "{text}");
        assert_eq!(histogram.count(), 4);

        let mut unlabelled = String::new();
        histogram.render(&mut unlabelled, "h", "");
        assert!(
            unlabelled.contains("h_bucket{le=\"+Inf\"} 4\n"),
            "{unlabelled}"
        );
        assert!(unlabelled.contains("h_count 4\n"), "{unlabelled}");
    }

    #[test]
    fn a_workflow_without_observations_has_no_histograms() {
        let latency = PhaseLatency::default();
        assert!(latency.get(Phase::Auth).is_none());
        latency.observe(Phase::Script, Duration::from_millis(3));
        assert_eq!(latency.get(Phase::Script).map(Histogram::count), Some(1));
        assert_eq!(latency.get(Phase::Auth).map(Histogram::count), Some(0));
    }
}
