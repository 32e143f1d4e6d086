//! Ingest counters: accepted messages, rejections per reason and per device.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset, Utc};
use serde::Serialize;

use super::decode::Reject;

/// Log at most one line per (device, reason) in this period.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Counters shared between the ingest task and the status API.
#[derive(Debug, Default)]
pub struct IngestStats {
    accepted: AtomicU64,
    /// (device id or "-" for unknown topics, reason) → count, and when it was last logged.
    rejected: Mutex<BTreeMap<(String, Reject), (u64, Option<Instant>)>>,
}

/// A copy of the counters.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct StatsSnapshot {
    pub accepted: u64,
    pub rejected_total: u64,
    pub rejected_by_reason: BTreeMap<String, u64>,
    pub rejected_by_device: BTreeMap<String, u64>,
}

impl IngestStats {
    pub fn accept(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a rejection and logs it unless this (device, reason) was logged recently.
    pub fn reject(&self, device: Option<&str>, reason: Reject, topic: &str) {
        let key = (device.unwrap_or("-").to_owned(), reason);
        let Ok(mut map) = self.rejected.lock() else {
            return;
        };
        let entry = map.entry(key).or_insert((0, None));
        entry.0 += 1;
        let now = Instant::now();
        if entry.1.is_none_or(|t| now.duration_since(t) >= LOG_EVERY) {
            entry.1 = Some(now);
            tracing::warn!(
                device = device.unwrap_or("-"),
                reason = reason.as_str(),
                topic,
                count = entry.0,
                "sensor message rejected"
            );
        }
    }

    /// Logs a sensor whose clock is far from the gateway's (rate-limited with rejections).
    pub fn clock_skew(&self, device: &str, sensor: DateTime<FixedOffset>, gateway: DateTime<Utc>) {
        tracing::debug!(device, %sensor, %gateway, "sensor clock is off; using the gateway's receive time");
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let mut s = StatsSnapshot {
            accepted: self.accepted.load(Ordering::Relaxed),
            ..StatsSnapshot::default()
        };
        if let Ok(map) = self.rejected.lock() {
            for ((device, reason), (n, _)) in map.iter() {
                s.rejected_total += n;
                *s.rejected_by_reason.entry(reason.as_str().to_owned()).or_default() += n;
                *s.rejected_by_device.entry(device.clone()).or_default() += n;
            }
        }
        s
    }
}
