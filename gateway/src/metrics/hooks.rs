//! The three instruments no stage keeps a counter for: alerts raised by kind and level, how
//! long an alert event takes to commit, and how long an inference takes. The stages call
//! these one-line hooks; `/metrics` reads the instruments at scrape time.
//!
//! This file is a leaf: it imports no stage, so a stage calling it imports nothing that
//! comes after it (like [`crate::supervise::fault_point`]). The instruments are
//! process-wide, as Prometheus sees a process: they count from the process's start, and
//! with `[metrics]` off they are a few atomics nobody reads.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use edge_config::{AlertKind, Level};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

/// `kind`, `level` of an alert.
pub(super) type KindLevel = [(&'static str, &'static str); 2];

/// Seconds: from half a millisecond (a WAL commit on an SSD) to 5 s (a dying SD card).
const COMMIT_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Seconds: from 2.5 ms (YOLOX-Nano on a desktop core) to 2.5 s (an overloaded ARM board).
const INFERENCE_BUCKETS: [f64; 11] = [
    0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5,
];

/// Alerts raised (their first event committed), by kind and level.
pub(super) static ALERTS_RAISED: LazyLock<Family<KindLevel, Counter>> =
    LazyLock::new(Family::default);
/// Seconds the alert task spent committing a trigger's alert events.
pub(super) static ALERT_COMMIT_SECONDS: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::new(COMMIT_BUCKETS));
/// Seconds one detector inference took (all cameras share the detector).
pub(super) static INFERENCE_SECONDS: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::new(INFERENCE_BUCKETS));

/// An alert was raised (its `raised` event is committed).
pub fn alert_raised(kind: AlertKind, level: Level) {
    ALERTS_RAISED
        .get_or_create(&[("kind", kind.as_str()), ("level", level.as_str())])
        .inc();
}

/// Committing a trigger's `events` alert events took `took` (nothing is observed for a
/// trigger that committed no event).
pub fn alert_commit_took(took: Duration, events: usize) {
    if events > 0 {
        ALERT_COMMIT_SECONDS.observe(took.as_secs_f64());
    }
}

/// Times one inference from its creation until it is dropped.
#[must_use = "the inference is timed until this is dropped"]
pub struct InferenceTimer(Instant);

impl InferenceTimer {
    pub fn start() -> InferenceTimer {
        InferenceTimer(Instant::now())
    }
}

impl Drop for InferenceTimer {
    fn drop(&mut self) {
        INFERENCE_SECONDS.observe(self.0.elapsed().as_secs_f64());
    }
}
