//! `sim verify`: the end-to-end check a demo prints. Subscribes to the platform side
//! (`{prefix}/{site}/alerts` on the upstream broker) and reports how many alert events
//! arrived, duplicates, gaps in the per-site `seq`, and latency from the event's
//! `updated_at` to its arrival.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::mqtt::{self, Endpoint};

/// Errors of `sim verify`.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot connect to the upstream broker at {broker}: {reason}")]
    Connect { broker: String, reason: String },
    #[error("MQTT client error: {0}")]
    Client(#[from] rumqttc::ClientError),
}

/// What to check.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub upstream: Endpoint,
    pub site: String,
    /// Topic prefix (`uplink.topic_prefix`). Default `shouwang`.
    pub prefix: String,
    /// How many distinct alert events must arrive.
    pub expect: u64,
    /// Give up after this long.
    pub timeout: Duration,
    /// Once `expect` arrived, keep listening this long for duplicates.
    pub settle: Duration,
}

impl VerifyOptions {
    pub fn new(upstream: Endpoint, site: &str, expect: u64) -> VerifyOptions {
        VerifyOptions {
            upstream,
            site: site.to_owned(),
            prefix: "shouwang".to_owned(),
            expect,
            timeout: Duration::from_secs(60),
            settle: Duration::from_secs(1),
        }
    }

    /// `{prefix}/{site}/alerts`.
    pub fn topic(&self) -> String {
        format!("{}/{}/alerts", self.prefix, self.site)
    }
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub min: i64,
    pub p50: i64,
    pub p95: i64,
    pub max: i64,
}

/// Counts alert events as they arrive.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// seq → times received.
    seen: BTreeMap<u64, u64>,
    received: u64,
    unreadable: u64,
    out_of_order: u64,
    last_seq: Option<u64>,
    /// Highest `seq` of a first arrival per priority class (see [`priority`]).
    class_max: [Option<u64>; 4],
    reordered: Vec<u64>,
    latencies: Vec<i64>,
}

/// The outbox's drain classes: red/orange alarms, yellow warnings, blue notices, anything
/// else. Within a class, first arrivals must come in `seq` order.
fn priority(level: &serde_json::Value) -> usize {
    match level.as_str() {
        Some("red" | "orange") => 0,
        Some("yellow") => 1,
        Some("blue") => 2,
        _ => 3,
    }
}

impl Tally {
    /// Adds one received payload.
    pub fn add(&mut self, payload: &[u8], received_at: DateTime<Utc>) {
        match serde_json::from_slice::<serde_json::Value>(payload) {
            Ok(v) => self.add_event(&v, received_at),
            Err(_) => {
                self.received += 1;
                self.unreadable += 1;
            }
        }
    }

    /// Adds one received alert event, already parsed.
    pub fn add_event(&mut self, v: &serde_json::Value, received_at: DateTime<Utc>) {
        self.received += 1;
        let Some(seq) = v["seq"].as_u64() else {
            self.unreadable += 1;
            return;
        };
        let count = self.seen.entry(seq).or_default();
        *count += 1;
        if *count == 1 {
            let max = &mut self.class_max[priority(&v["level"])];
            if max.is_some_and(|m| seq < m) {
                self.reordered.push(seq);
            }
            *max = (*max).max(Some(seq));
        }
        if self.last_seq.is_some_and(|last| seq < last) {
            self.out_of_order += 1;
        }
        self.last_seq = Some(seq);
        if let Some(at) = v["updated_at"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        {
            self.latencies
                .push((received_at - at.with_timezone(&Utc)).num_milliseconds());
        }
    }

    /// Distinct alert events (by `seq`).
    pub fn unique(&self) -> u64 {
        self.seen.len() as u64
    }

    /// The verdict against `expect` distinct events.
    pub fn verdict(&self, expect: u64) -> Verdict {
        let duplicates = self.seen.values().map(|n| n - 1).sum();
        let gaps = match (self.seen.keys().next(), self.seen.keys().next_back()) {
            (Some(&lo), Some(&hi)) => (lo..=hi).filter(|s| !self.seen.contains_key(s)).collect(),
            _ => Vec::new(),
        };
        let mut l = self.latencies.clone();
        l.sort_unstable();
        let pick = |q: f64| l[((l.len() - 1) as f64 * q).round() as usize];
        Verdict {
            expected: expect,
            received: self.received,
            unique: self.unique(),
            duplicates,
            missing: expect.saturating_sub(self.unique()),
            absent: Vec::new(),
            gaps,
            out_of_order: self.out_of_order,
            reordered: self.reordered.clone(),
            unreadable: self.unreadable,
            latency_ms: (!l.is_empty()).then(|| Latency {
                min: l[0],
                p50: pick(0.5),
                p95: pick(0.95),
                max: l[l.len() - 1],
            }),
        }
    }

    /// The verdict against a known set of sequence numbers (say every `seq` the gateway
    /// recorded): [`Verdict::absent`] lists those that never arrived, and `missing` counts
    /// them.
    pub fn verdict_for(&self, expected: impl IntoIterator<Item = u64>) -> Verdict {
        let mut count = 0;
        let absent: Vec<u64> = expected
            .into_iter()
            .inspect(|_| count += 1)
            .filter(|s| !self.seen.contains_key(s))
            .collect();
        Verdict {
            missing: absent.len() as u64,
            absent,
            ..self.verdict(count)
        }
    }
}

/// The outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub expected: u64,
    /// Messages received, duplicates included.
    pub received: u64,
    /// Distinct `seq` values.
    pub unique: u64,
    pub duplicates: u64,
    /// `expected - unique`, at least 0; with [`Tally::verdict_for`], the length of `absent`.
    pub missing: u64,
    /// The expected `seq` values that never arrived, when judged against a known set
    /// ([`Tally::verdict_for`]); empty otherwise.
    pub absent: Vec<u64>,
    /// `seq` values absent between the lowest and the highest received.
    pub gaps: Vec<u64>,
    /// Arrivals with a lower `seq` than the previous one (the outbox sends alarms first, so
    /// this is not an error by itself).
    pub out_of_order: u64,
    /// First arrivals of a `seq` lower than an earlier first arrival of the same priority
    /// (red/orange, yellow, blue): the order the gateway guarantees was broken.
    pub reordered: Vec<u64>,
    /// Payloads without a readable `seq`.
    pub unreadable: u64,
    pub latency_ms: Option<Latency>,
}

impl Verdict {
    /// Nothing missing or absent, no gap, and `seq` in order within each priority class.
    pub fn ok(&self) -> bool {
        self.missing == 0
            && self.absent.is_empty()
            && self.gaps.is_empty()
            && self.reordered.is_empty()
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "alerts: {} of {} expected arrived ({} messages, {} duplicates, {} missing)",
            self.unique, self.expected, self.received, self.duplicates, self.missing
        )?;
        if !self.absent.is_empty() {
            let shown = &self.absent[..self.absent.len().min(20)];
            writeln!(f, "absent: {shown:?} ({} in all)", self.absent.len())?;
        }
        if self.gaps.is_empty() {
            writeln!(f, "seq gaps: none")?;
        } else {
            writeln!(f, "seq gaps: {:?}", self.gaps)?;
        }
        writeln!(
            f,
            "out of order: {} (re-sends and alarms first), reordered within a level: {}, unreadable: {}",
            self.out_of_order,
            if self.reordered.is_empty() { "none".to_owned() } else { format!("{:?}", self.reordered) },
            self.unreadable
        )?;
        match self.latency_ms {
            Some(l) => writeln!(
                f,
                "latency ms: min {} p50 {} p95 {} max {}",
                l.min, l.p50, l.p95, l.max
            )?,
            None => writeln!(f, "latency: no timestamps")?,
        }
        write!(f, "{}", if self.ok() { "OK" } else { "FAILED" })
    }
}

/// A subscription on the platform side that tallies alert events in the background from the
/// moment [`Verifier::subscribe`] returns; judge it later with [`Verifier::finish`], once
/// the number of events to expect is known (e.g. counted in the gateway's database).
pub struct Verifier {
    client: AsyncClient,
    tally: Arc<Mutex<Tally>>,
    unique: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl Verifier {
    /// Connects to `options.upstream`, subscribes to [`VerifyOptions::topic`] (QoS 1) and
    /// returns once the broker acknowledged the subscription. Fails if no connection is
    /// made within 10 s.
    pub async fn subscribe(options: &VerifyOptions) -> Result<Verifier, VerifyError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let id = format!(
            "sim-verify-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let (client, mut events) = mqtt::client(&id, &options.upstream, 64);
        client.subscribe(options.topic(), QoS::AtLeastOnce).await?;
        let started = Instant::now();
        let mut connected = false;
        let tally = Arc::new(Mutex::new(Tally::default()));
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => connected = true,
                Ok(Event::Incoming(Packet::SubAck(_))) => break,
                Ok(Event::Incoming(Packet::Publish(p))) => lock(&tally).add(&p.payload, Utc::now()),
                Ok(_) => {}
                Err(e) => {
                    if !connected && started.elapsed() > Duration::from_secs(10) {
                        return Err(VerifyError::Connect {
                            broker: options.upstream.to_string(),
                            reason: e.to_string(),
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
        let (unique_tx, unique) = watch::channel(lock(&tally).unique());
        let sink = tally.clone();
        let (resubscriber, topic) = (client.clone(), options.topic());
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let mut t = lock(&sink);
                        t.add(&p.payload, Utc::now());
                        unique_tx.send_replace(t.unique());
                    }
                    // A clean session: after a reconnect the subscription is made again.
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = resubscriber.try_subscribe(topic.clone(), QoS::AtLeastOnce);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
                }
            }
        });
        Ok(Verifier {
            client,
            tally,
            unique,
            task,
        })
    }

    /// The tally so far.
    pub fn tally(&self) -> Tally {
        lock(&self.tally).clone()
    }

    /// Waits until `expect` distinct events arrived (then `settle` more for duplicates),
    /// `timeout` passed, or `stop` is cancelled; returns the verdict against `expect`.
    pub async fn finish(
        mut self,
        expect: u64,
        timeout: Duration,
        settle: Duration,
        stop: CancellationToken,
    ) -> Verdict {
        let reached = self.unique.wait_for(|n| *n >= expect);
        let complete = tokio::select! {
            _ = stop.cancelled() => false,
            _ = tokio::time::sleep(timeout) => false,
            r = reached => r.is_ok(),
        };
        if complete {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(settle) => {}
            }
        }
        let _ = self.client.try_disconnect();
        self.tally().verdict(expect)
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(tally: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    tally.lock().unwrap_or_else(|p| p.into_inner())
}

/// Subscribes to the alerts topic and tallies until `expect` distinct events arrived (plus
/// `settle`), `timeout` passed, or `stop` is cancelled. `ready` is cancelled once the
/// subscription is in place.
pub async fn verify(
    options: &VerifyOptions,
    ready: CancellationToken,
    stop: CancellationToken,
) -> Result<Verdict, VerifyError> {
    let started = Instant::now();
    let verifier = tokio::select! {
        _ = stop.cancelled() => return Ok(Tally::default().verdict(options.expect)),
        v = Verifier::subscribe(options) => v?,
    };
    ready.cancel();
    let left = options.timeout.saturating_sub(started.elapsed());
    Ok(verifier
        .finish(options.expect, left, options.settle, stop)
        .await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, at: &str) -> Vec<u8> {
        serde_json::json!({ "seq": seq, "kind": "smoke", "updated_at": at })
            .to_string()
            .into_bytes()
    }

    #[test]
    fn the_tally_counts_duplicates_gaps_disorder_and_latency() {
        let now: DateTime<Utc> = "2026-01-01T00:00:01.000Z".parse().unwrap();
        let mut t = Tally::default();
        for seq in [1, 2, 2, 5, 4, 7] {
            t.add(&event(seq, "2026-01-01T00:00:00.750Z"), now);
        }
        t.add(b"not json", now);
        let v = t.verdict(7);
        assert_eq!((v.received, v.unique, v.duplicates), (7, 5, 1));
        assert_eq!(v.gaps, [3, 6]);
        assert_eq!(v.missing, 2);
        assert_eq!(v.out_of_order, 1);
        assert_eq!(v.reordered, [4]);
        assert_eq!(v.unreadable, 1);
        assert_eq!(v.latency_ms.unwrap().p50, 250);
        assert!(!v.ok());
        assert!(v.to_string().contains("FAILED"));
    }

    #[test]
    fn alarms_overtaking_yellow_alerts_are_not_reordering_but_re_sends_are_duplicates() {
        let now = Utc::now();
        let at = now.to_rfc3339();
        let mut t = Tally::default();
        let leveled = |seq: u64, level: &str| {
            serde_json::json!({ "seq": seq, "level": level, "updated_at": at })
                .to_string()
                .into_bytes()
        };
        // Backlog drain: red 2 and 4 first, then yellow 1 and 3; then a re-send of 3, 4.
        for (seq, level) in [
            (2, "red"),
            (4, "orange"),
            (1, "yellow"),
            (3, "yellow"),
            (3, "yellow"),
            (4, "orange"),
        ] {
            t.add(&leveled(seq, level), now);
        }
        let v = t.verdict(4);
        assert!(v.ok(), "{v}");
        assert!(v.reordered.is_empty());
        assert_eq!(v.duplicates, 2);
        assert!(v.out_of_order >= 1);
    }

    #[test]
    fn judged_against_a_known_set_absent_seqs_are_listed_even_outside_the_received_range() {
        let at = Utc::now();
        let mut t = Tally::default();
        for seq in [2, 3, 3, 5, 4] {
            let event = serde_json::json!({ "seq": seq, "level": "red" });
            t.add_event(&event, at);
        }
        let v = t.verdict_for(1..=7);
        assert_eq!((v.expected, v.received, v.unique), (7, 5, 4));
        assert_eq!(v.duplicates, 1);
        assert_eq!(v.absent, [1, 6, 7], "before, and after, what arrived");
        assert_eq!(v.missing, 3);
        assert!(v.gaps.is_empty(), "2..=5 all arrived");
        assert_eq!(v.reordered, [4]);
        assert!(!v.ok());
        assert!(v.to_string().contains("absent: [1, 6, 7]"), "{v}");
        let all_there = t.verdict_for(2..=5);
        assert!(all_there.absent.is_empty() && all_there.missing == 0);
        assert!(!all_there.ok(), "4 came after 5: still reordered");
    }

    #[test]
    fn everything_once_is_ok() {
        let now = Utc::now();
        let mut t = Tally::default();
        for seq in 10..20 {
            t.add(&event(seq, &now.to_rfc3339()), now);
        }
        let v = t.verdict(10);
        assert!(v.ok(), "{v}");
        assert_eq!(v.duplicates, 0);
    }
}
