//! Ingest counters: accepted messages, rejections per reason and per device.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset, Utc};
use serde::{Deserialize, Serialize};

use super::decode::Reject;

/// Log at most one line per (device, reason) in this period.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Log a device's clock skew at most this often.
const SKEW_LOG_EVERY: Duration = Duration::from_secs(600);

/// Rejections of one (device, reason): how many, and when one was last logged.
#[derive(Debug, Default, Clone, Copy)]
struct Rejections {
    count: u64,
    logged_at: Option<Instant>,
}

/// Counters shared between the ingest task and the status API.
#[derive(Debug, Default)]
pub struct IngestStats {
    accepted: AtomicU64,
    /// (device id or "-" for unknown topics, reason) → rejections. A mutex is fine: it is
    /// taken only on the rejection path and by status reads.
    rejected: Mutex<BTreeMap<(String, Reject), Rejections>>,
    /// Device → when its clock skew was last logged.
    skew_logged: Mutex<BTreeMap<String, Instant>>,
}

/// A copy of the counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub accepted: u64,
    pub rejected_total: u64,
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// Device id (`-` for topics no device owns) → rejections.
    pub rejected_by_device: BTreeMap<String, u64>,
}

impl StatsSnapshot {
    /// The same counters with only the `n` devices with the most rejections kept (what goes
    /// into `status.json`, rewritten every second).
    pub fn with_top_devices(mut self, n: usize) -> Self {
        self.rejected_by_device = self
            .top_devices(n)
            .into_iter()
            .map(|(d, c)| (d.to_owned(), c))
            .collect();
        self
    }

    /// `device (count)` for the devices with the most rejections, most first.
    pub fn top_devices(&self, n: usize) -> Vec<(&str, u64)> {
        let mut devices: Vec<(&str, u64)> = self
            .rejected_by_device
            .iter()
            .map(|(d, c)| (d.as_str(), *c))
            .collect();
        devices.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        devices.truncate(n);
        devices
    }
}

impl IngestStats {
    pub fn accept(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a rejection and logs it unless this (device, reason) was logged recently.
    pub fn reject(&self, device: Option<&str>, reason: Reject, topic: &str) {
        self.reject_many(device, reason, topic, 1);
    }

    /// Counts `n` rejections at once (the broker reports dropped messages in runs).
    pub fn reject_many(&self, device: Option<&str>, reason: Reject, topic: &str, n: u64) {
        let key = (device.unwrap_or("-").to_owned(), reason);
        let Ok(mut map) = self.rejected.lock() else {
            return;
        };
        let entry = map.entry(key).or_default();
        entry.count += n;
        let now = Instant::now();
        if entry
            .logged_at
            .is_none_or(|t| now.duration_since(t) >= LOG_EVERY)
        {
            entry.logged_at = Some(now);
            tracing::warn!(
                device = device.unwrap_or("-"),
                reason = reason.as_str(),
                topic,
                count = entry.count,
                "sensor message rejected"
            );
        }
    }

    /// Logs a sensor whose clock is far from the gateway's (rate-limited with rejections).
    pub fn clock_skew(&self, device: &str, sensor: DateTime<FixedOffset>, gateway: DateTime<Utc>) {
        let Ok(mut logged) = self.skew_logged.lock() else {
            return;
        };
        let now = Instant::now();
        let last = logged.get(device).copied();
        if last.is_none_or(|t| now.duration_since(t) >= SKEW_LOG_EVERY) {
            logged.insert(device.to_owned(), now);
            tracing::warn!(device, %sensor, %gateway, "sensor clock is off; using the gateway's receive time");
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let mut s = StatsSnapshot {
            accepted: self.accepted.load(Ordering::Relaxed),
            ..StatsSnapshot::default()
        };
        if let Ok(map) = self.rejected.lock() {
            for ((device, reason), r) in map.iter() {
                let n = &r.count;
                s.rejected_total += n;
                *s.rejected_by_reason
                    .entry(reason.as_str().to_owned())
                    .or_default() += n;
                *s.rejected_by_device.entry(device.clone()).or_default() += n;
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_file_keeps_only_the_devices_with_the_most_rejections() {
        let stats = IngestStats::default();
        for i in 0..30u64 {
            let device = format!("dev-{i:02}");
            stats.reject_many(Some(&device), Reject::Throttled, "t", i + 1);
        }
        stats.reject(None, Reject::UnknownDevice, "ghost");
        let full = stats.snapshot();
        assert_eq!(full.rejected_by_device.len(), 31);
        assert_eq!(full.rejected_total, (1..=30).sum::<u64>() + 1);
        let top = full.clone().with_top_devices(3);
        let kept: Vec<&str> = top.rejected_by_device.keys().map(String::as_str).collect();
        assert_eq!(kept, ["dev-27", "dev-28", "dev-29"]);
        assert_eq!(top.rejected_total, full.rejected_total, "totals stay whole");
        assert_eq!(full.top_devices(2), [("dev-29", 30), ("dev-28", 29)]);
    }
}
