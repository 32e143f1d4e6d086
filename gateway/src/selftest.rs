//! The end-to-end self-test of the alarm path.
//!
//! Every `supervision.self_test_period_s` a probe — an MQTT message with a fresh random
//! nonce — is published on `shouwang/{site}/selftest` through the broker's real listener, as
//! a sensor would. Ingest subscribes that topic exactly (a log of its own, like a device),
//! admits only a nonce it is waiting for, and hands it to the rules, which pass it to the
//! alert task; the alert task commits it to the database (`alerts_meta.self_test_nonce`, a
//! real `synchronous=FULL` commit on the alert writer) and only then reports the round trip.
//! No alert is made of it.
//!
//! When the oldest outstanding probe is older than `supervision.self_test_timeout_s`
//! (default 60 s, at most 90: EN 54-2 wants a fault within 100 s), the pseudo-stage
//! `self_test` faults (see [`crate::supervise`]): a red `gateway_fault` "alarm path not
//! working", the log, `status.json` and the console. It clears at the next completed round
//! trip. A forged probe cannot fake health: a nonce only completes a round trip after it went
//! through ingest, rules and a commit, which is exactly what is tested.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rumqttc::{AsyncClient, EventLoop, QoS};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::supervise::{fault_point, Health, SelfTestSnapshot, StageResult};

/// Probes waiting for their round trip at most (older ones are forgotten, not the oldest
/// time: a path that loses every probe still fails by the oldest one's age).
const MAX_OUTSTANDING: usize = 16;

/// A probe as it travels ingest → rules → alert task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub nonce: u64,
}

#[derive(Debug, Default)]
struct Inner {
    /// Probes sent and not yet back: (nonce, when sent).
    outstanding: VecDeque<(u64, Instant)>,
    /// When the oldest probe still counted as outstanding was sent (kept when older probes are
    /// forgotten, so a path that loses everything keeps aging).
    oldest: Option<Instant>,
    snapshot: SelfTestSnapshot,
}

/// The self-test's shared state: the probe sender, ingest and the alert task each hold it.
#[derive(Debug)]
pub struct SelfTest {
    topic: String,
    period: Duration,
    timeout: Duration,
    health: Arc<Health>,
    /// Held only to update a few fields; never across an await.
    inner: Mutex<Inner>,
}

impl SelfTest {
    pub fn new(site: &str, period: Duration, timeout: Duration, health: Arc<Health>) -> Arc<Self> {
        let me = Arc::new(SelfTest {
            topic: topic(site),
            period,
            timeout,
            health,
            inner: Mutex::new(Inner::default()),
        });
        me.health.set_self_test(SelfTestSnapshot::default(), None);
        me
    }

    /// The topic probes travel on.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new probe's payload (its nonce is now outstanding).
    pub fn next_probe(&self, now: Instant) -> Vec<u8> {
        let nonce = random_nonce();
        let mut inner = self.lock();
        if inner.outstanding.len() >= MAX_OUTSTANDING {
            inner.outstanding.pop_front();
        }
        inner.outstanding.push_back((nonce, now));
        inner.oldest.get_or_insert(now);
        nonce.to_string().into_bytes()
    }

    /// Ingest's check: the probe if `payload` carries a nonce that is outstanding.
    pub fn accept(&self, payload: &[u8]) -> Option<Probe> {
        let nonce: u64 = std::str::from_utf8(payload).ok()?.trim().parse().ok()?;
        let inner = self.lock();
        inner
            .outstanding
            .iter()
            .any(|(n, _)| *n == nonce)
            .then_some(Probe { nonce })
    }

    /// The alert task committed probe `nonce`: a round trip is complete.
    pub fn completed(&self, nonce: u64, now: Instant) {
        let mut inner = self.lock();
        let Some(i) = inner.outstanding.iter().position(|(n, _)| *n == nonce) else {
            return;
        };
        let sent = inner.outstanding[i].1;
        inner.outstanding.drain(..=i);
        inner.oldest = inner.outstanding.front().map(|(_, t)| *t);
        inner.snapshot.last_ok_at = Some(Utc::now());
        inner.snapshot.round_trip_ms = Some(now.saturating_duration_since(sent).as_millis() as u64);
        inner.snapshot.failing_since = None;
        let snapshot = inner.snapshot.clone();
        drop(inner);
        self.health.set_self_test(snapshot, None);
    }

    /// Marks the path broken when the oldest probe is overdue.
    pub fn check(&self, now: Instant) {
        let mut inner = self.lock();
        let overdue = inner
            .oldest
            .filter(|t| now.saturating_duration_since(*t) > self.timeout);
        let failing = overdue.map(|_| {
            let since = inner
                .snapshot
                .failing_since
                .get_or_insert_with(|| Utc::now() - chrono_duration(self.timeout));
            format!(
                "alarm path not working: no self-test round trip (broker → ingest → rules → alert \
                 store) since {} (timeout {} s)",
                since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                self.timeout.as_secs()
            )
        });
        let snapshot = inner.snapshot.clone();
        drop(inner);
        self.health.set_self_test(snapshot, failing);
    }
}

fn chrono_duration(d: Duration) -> chrono::TimeDelta {
    chrono::TimeDelta::from_std(d).unwrap_or(chrono::TimeDelta::zero())
}

/// `shouwang/{site}/selftest`.
pub fn topic(site: &str) -> String {
    format!("shouwang/{site}/selftest")
}

fn random_nonce() -> u64 {
    let mut b = [0u8; 8];
    match getrandom::getrandom(&mut b) {
        Ok(()) => u64::from_le_bytes(b),
        Err(_) => ulid::Ulid::generate().random() as u64,
    }
}

/// Last time a probe's round trip completed, for logs.
pub fn describe(s: &SelfTestSnapshot) -> String {
    match (s.failing_since, s.last_ok_at, s.round_trip_ms) {
        (Some(since), _, _) => format!("FAILING since {}", at(since)),
        (None, Some(ok), Some(ms)) => format!("ok, last round trip {ms} ms at {}", at(ok)),
        _ => "waiting for the first round trip".to_owned(),
    }
}

fn at(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The self-test stage: publishes a probe every period and checks for overdue ones, until
/// `token` is cancelled. Its MQTT client is the gateway's own (unguessable id, internal
/// credentials), connected to the same listener sensors use.
pub async fn run(
    self_test: Arc<SelfTest>,
    client: AsyncClient,
    mut events: EventLoop,
    token: CancellationToken,
) -> StageResult {
    let driver = tokio::spawn(async move {
        loop {
            if events.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    let mut every = tokio::time::interval(self_test.period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let outcome = loop {
        tokio::select! {
            _ = token.cancelled() => break Ok(()),
            _ = every.tick() => {}
        }
        fault_point("self_test_probe").await;
        let now = Instant::now();
        self_test.check(now);
        let payload = self_test.next_probe(now);
        // A full request queue means the client is stuck: the probe is lost, which the
        // timeout reports; never wait here, or the check above would stop too.
        if let Err(e) = client.try_publish(self_test.topic(), QoS::AtLeastOnce, false, payload) {
            tracing::debug!(error = %e, "self-test probe not queued");
        }
    };
    driver.abort();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selftest() -> (Arc<SelfTest>, Arc<Health>) {
        let health = Arc::new(Health::default());
        let st = SelfTest::new(
            "s",
            Duration::from_secs(10),
            Duration::from_secs(60),
            health.clone(),
        );
        (st, health)
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_comes_back_records_its_round_trip() {
        let (st, health) = selftest();
        let t0 = Instant::now();
        let payload = st.next_probe(t0);
        let probe = st.accept(&payload).expect("outstanding nonce is accepted");
        st.completed(probe.nonce, t0 + Duration::from_millis(40));
        let snap = health.snapshot().self_test.unwrap();
        assert_eq!(snap.round_trip_ms, Some(40));
        assert!(snap.last_ok_at.is_some() && snap.failing_since.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn forged_or_replayed_nonces_are_not_accepted() {
        let (st, _) = selftest();
        let t0 = Instant::now();
        assert!(st.accept(b"12345").is_none());
        assert!(st.accept(b"not a number").is_none());
        let payload = st.next_probe(t0);
        let probe = st.accept(&payload).unwrap();
        st.completed(probe.nonce, t0);
        assert!(
            st.accept(&payload).is_none(),
            "a completed nonce is not accepted again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn probes_that_never_return_fault_the_alarm_path_after_the_timeout_and_clear_on_return() {
        let (st, health) = selftest();
        let t0 = Instant::now();
        for i in 0..7 {
            st.next_probe(t0 + Duration::from_secs(10 * i));
            st.check(t0 + Duration::from_secs(10 * i));
        }
        assert!(
            health.snapshot().faults().is_empty(),
            "60 s have not passed yet"
        );
        // Far more probes than are remembered: the oldest one's age still counts.
        for i in 7..40 {
            st.next_probe(t0 + Duration::from_secs(10 * i));
        }
        st.check(t0 + Duration::from_secs(61));
        let snap = health.snapshot();
        let faults = snap.faults();
        assert_eq!(faults.len(), 1);
        assert_eq!(faults[0].0, crate::supervise::SELF_TEST_STAGE);
        assert!(faults[0]
            .1
            .last_error
            .as_deref()
            .unwrap()
            .contains("alarm path not working"));
        assert!(snap.self_test.unwrap().failing_since.is_some());
        let payload = st.next_probe(t0 + Duration::from_secs(400));
        let probe = st.accept(&payload).unwrap();
        st.completed(probe.nonce, t0 + Duration::from_secs(401));
        assert!(health.snapshot().faults().is_empty());
    }
}
