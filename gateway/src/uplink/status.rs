//! The uplink's contribution to the gateway status: link state and counters, live
//! ([`UplinkStatus`]) and as a copy ([`LinkSnapshot`]) for [`crate::status`] to persist and
//! report.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::LinkSettings;

/// Where the link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// No `[uplink]` (or `enabled = false`): alerts stay in the local outbox.
    Disabled,
    /// TCP/TLS/MQTT handshake in progress.
    Connecting,
    /// CONNACK received; draining.
    Connected,
    /// Waiting before the next attempt after a failure.
    Backoff,
    /// The link task has stopped (shutdown).
    Stopped,
}

impl LinkState {
    pub const fn as_str(self) -> &'static str {
        match self {
            LinkState::Disabled => "disabled",
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Backoff => "backoff",
            LinkState::Stopped => "stopped",
        }
    }
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A copy of the link's state and counters (counters are since the daemon started; the
/// outbox's own counters in [`crate::outbox::OutboxStats`] are persistent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkSnapshot {
    pub state: LinkState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// When the current state began, ms since the Unix epoch.
    pub since_ms: i64,
    /// The last connection error, kept after a reconnect for diagnosis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// In `backoff`: when the next attempt is due, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at_ms: Option<i64>,
    pub connects_total: u64,
    pub failures_total: u64,
    pub published_total: u64,
    pub acked_total: u64,
    pub commands_total: u64,
    /// Only alarm rows remain and they exceed the quota.
    pub buffer_full: bool,
    pub quota_bytes: u64,
}

#[derive(Debug)]
struct Inner {
    /// The broker the link is on (or trying): one of `[uplink] hosts`.
    host: Option<String>,
    port: Option<u16>,
    state: LinkState,
    since_ms: i64,
    last_error: Option<String>,
    retry_at_ms: Option<i64>,
}

/// Live link status, shared by the link and housekeeping tasks and the daemon.
#[derive(Debug)]
pub struct UplinkStatus {
    /// State transitions are rare (connect, fail); a mutex keeps state, time and error
    /// consistent with each other, counters are separate atomics on the hot path.
    inner: Mutex<Inner>,
    pub connects_total: AtomicU64,
    pub failures_total: AtomicU64,
    /// Rows handed to the MQTT client (re-sends included).
    pub published_total: AtomicU64,
    /// PUBACKs (PUBCOMPs for QoS 2) matched to a row, counted as they arrive.
    pub pubacks_total: AtomicU64,
    /// Rows deleted from the outbox after their PUBACK: counted when the batched delete is
    /// committed, so up to one ack batch behind `pubacks_total`.
    pub acked_total: AtomicU64,
    pub commands_total: AtomicU64,
    pub buffer_full: AtomicBool,
    pub quota_bytes: AtomicU64,
}

/// Now, in ms since the Unix epoch (the unit of every status timestamp).
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl UplinkStatus {
    pub fn new(settings: Option<&LinkSettings>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                host: settings.map(|s| s.host.clone()),
                port: settings.map(|s| s.port),
                state: if settings.is_some() {
                    LinkState::Connecting
                } else {
                    LinkState::Disabled
                },
                since_ms: now_ms(),
                last_error: None,
                retry_at_ms: None,
            }),
            connects_total: AtomicU64::new(0),
            failures_total: AtomicU64::new(0),
            published_total: AtomicU64::new(0),
            pubacks_total: AtomicU64::new(0),
            acked_total: AtomicU64::new(0),
            commands_total: AtomicU64::new(0),
            buffer_full: AtomicBool::new(false),
            quota_bytes: AtomicU64::new(0),
        }
    }

    fn update(&self, f: impl FnOnce(&mut Inner)) {
        if let Ok(mut inner) = self.inner.lock() {
            f(&mut inner);
        }
    }

    /// The broker the next attempt goes to (failover between `[uplink] hosts`).
    pub fn set_endpoint(&self, host: &str, port: u16) {
        self.update(|i| {
            i.host = Some(host.to_owned());
            i.port = Some(port);
        });
    }

    pub fn set_connecting(&self) {
        self.update(|i| {
            i.state = LinkState::Connecting;
            i.since_ms = now_ms();
            i.retry_at_ms = None;
        });
    }

    pub fn set_connected(&self) {
        self.connects_total.fetch_add(1, Ordering::Relaxed);
        self.update(|i| {
            i.state = LinkState::Connected;
            i.since_ms = now_ms();
            i.retry_at_ms = None;
        });
    }

    pub fn set_backoff(&self, error: String, retry_in: Duration) {
        self.failures_total.fetch_add(1, Ordering::Relaxed);
        self.update(|i| {
            let now = now_ms();
            i.state = LinkState::Backoff;
            i.since_ms = now;
            i.last_error = Some(error);
            i.retry_at_ms = Some(now + i64::try_from(retry_in.as_millis()).unwrap_or(i64::MAX / 2));
        });
    }

    pub fn set_stopped(&self) {
        self.update(|i| {
            if i.state != LinkState::Disabled {
                i.state = LinkState::Stopped;
                i.since_ms = now_ms();
                i.retry_at_ms = None;
            }
        });
    }

    pub fn state(&self) -> LinkState {
        self.inner
            .lock()
            .map(|i| i.state)
            .unwrap_or(LinkState::Stopped)
    }

    pub fn snapshot(&self) -> LinkSnapshot {
        let (state, since_ms, last_error, retry_at_ms, host, port) = self
            .inner
            .lock()
            .map(|i| {
                let (h, p) = (i.host.clone(), i.port);
                (
                    i.state,
                    i.since_ms,
                    i.last_error.clone(),
                    i.retry_at_ms,
                    h,
                    p,
                )
            })
            .unwrap_or((LinkState::Stopped, now_ms(), None, None, None, None));
        LinkSnapshot {
            state,
            host,
            port,
            since_ms,
            last_error,
            retry_at_ms,
            connects_total: self.connects_total.load(Ordering::Relaxed),
            failures_total: self.failures_total.load(Ordering::Relaxed),
            published_total: self.published_total.load(Ordering::Relaxed),
            acked_total: self.acked_total.load(Ordering::Relaxed),
            commands_total: self.commands_total.load(Ordering::Relaxed),
            buffer_full: self.buffer_full.load(Ordering::Relaxed),
            quota_bytes: self.quota_bytes.load(Ordering::Relaxed),
        }
    }
}
