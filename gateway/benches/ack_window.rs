//! Acknowledgement window: how long after a smoke detector got its PUBACK is its alarm
//! committed to the database?
//!
//! rumqttd acknowledges a QoS 1 publish as soon as it has appended it to its in-memory logs,
//! before ingest has read it; the alarm is durable only once the alert task committed it
//! (alert + event + outbox row, `synchronous=FULL`). A `kill -9` (or a crash) between the two
//! lost an alarm the sensor believed delivered. The broker front now holds rumqttd's PUBACK
//! until the commit (`broker::gate`), so the window is closed by construction; this bench
//! measures what that costs the sensor and checks, at each PUBACK, that the alarm is already
//! in the database. One run, in one process (the same pipeline `gateway run` starts):
//!
//! 1. raw rumqttd: publish → PUBACK of a QoS 1 message on a topic no device owns;
//! 2. 100 smoke alarms on an idle gateway, one at a time: publish → PUBACK at the sensor, and
//!    PUBACK → alert committed (the alert task's event for it, sent right after the commit)
//!    → alert received on the retained local topic `shouwang/{site}/alerts/#`;
//! 3. the same while 2,000 heat detectors report 2,000 readings per second in total (each
//!    reading is a durable telemetry row: the telemetry writer commits to the same database).
//!
//! Run: `cargo bench -p gateway --bench ack_window` (release build). Figures go in the README.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::alerts::{Alert, EventKind, Source};
use gateway::shutdown::Lifecycle;
use gateway::topology;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use support::{client, ms, percentile, spawn_events, spawn_loop};
use tokio::sync::{broadcast, mpsc};

const HEATS: usize = 2000;
/// Alarms per phase.
const ALARMS: usize = 100;
const RAW: usize = 200;
/// Background readings per second in phase 3.
const LOAD_RATE: usize = 2000;
/// Pause between two alarms, so that each is alone on the alarm path.
const SPACING: Duration = Duration::from_millis(20);

/// One alarm's timeline, from its publish.
struct Alarm {
    puback: Duration,
    committed: Duration,
    local: Duration,
    /// Its alert was in the database when the sensor had its PUBACK.
    stored_at_puback: bool,
}

/// Whether `device`'s smoke alert is in the gateway's database (a reader of its own).
fn stored(db: &rusqlite::Connection, device: &str) -> bool {
    db.query_row(
        "SELECT COUNT(*) FROM alerts WHERE kind = 'smoke' AND source = ?1",
        [format!("device:{device}")],
        |r| r.get::<_, i64>(0),
    )
    .is_ok_and(|n| n > 0)
}

/// A QoS 1 publisher whose PUBACK instants arrive on a channel, in order.
fn acked_client(
    addr: std::net::SocketAddr,
    id: &str,
) -> (AsyncClient, mpsc::UnboundedReceiver<Instant>) {
    let (c, e) = client(addr, id);
    let (tx, rx) = mpsc::unbounded_channel();
    spawn_events(e, move |at, event| {
        if let Event::Incoming(Packet::PubAck(_)) = event {
            let _ = tx.send(at);
        }
    });
    (c, rx)
}

async fn raw_puback(addr: std::net::SocketAddr) -> Vec<Duration> {
    let (c, mut acks) = acked_client(addr, "raw-pub");
    let mut samples = Vec::new();
    for _ in 0..RAW {
        let t0 = Instant::now();
        c.publish("bench/raw", QoS::AtLeastOnce, false, r#"{"smoke":true}"#)
            .await
            .unwrap();
        match tokio::time::timeout(Duration::from_secs(5), acks.recv()).await {
            Ok(Some(at)) => samples.push(at - t0),
            _ => eprintln!("  raw publish: no PUBACK within 5 s"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    samples
}

/// Waits for the raised event of `device`'s alert; `None` after 10 s.
async fn committed(events: &mut broadcast::Receiver<Alert>, device: &str) -> Option<Instant> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(a)) => {
                if a.event == EventKind::Raised && a.source == Source::Device(device.to_owned()) {
                    return Some(Instant::now());
                }
            }
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            _ => return None,
        }
    }
}

/// Waits for the local publication of `device`'s raised alert; `None` after 10 s.
async fn published(
    rx: &mut mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    device: &str,
) -> Option<Instant> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, payload) = tokio::time::timeout_at(deadline, rx.recv()).await.ok()??;
        let v: serde_json::Value = serde_json::from_slice(&payload).unwrap_or_default();
        if v["source"]["id"] == device && v["event"] == "raised" {
            return Some(Instant::now());
        }
    }
}

/// Raises `count` smoke alarms one at a time (`smoke-{first}`…); returns the timelines and
/// how many alarms were lost.
async fn alarms(
    addr: std::net::SocketAddr,
    running: &topology::Running,
    db: &rusqlite::Connection,
    (first, count): (usize, usize),
) -> (Vec<Alarm>, usize) {
    let (watch, watch_loop) = client(addr, &format!("window-watch-{first}"));
    let (tx, mut local) = mpsc::unbounded_channel();
    spawn_loop(watch_loop, Some(tx));
    watch
        .subscribe("shouwang/bench/alerts/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (sensor, mut acks) = acked_client(addr, &format!("window-sensor-{first}"));
    let mut events = running.events.subscribe();
    let (mut timelines, mut lost) = (Vec::new(), 0);
    for i in first..first + count {
        let device = format!("smoke-{i}");
        let t0 = Instant::now();
        sensor
            .publish(
                format!("sensors/{device}/state"),
                QoS::AtLeastOnce,
                false,
                r#"{"smoke":true}"#,
            )
            .await
            .unwrap();
        let ack = tokio::time::timeout(Duration::from_secs(5), acks.recv())
            .await
            .ok()
            .flatten();
        let stored_at_puback = stored(db, &device);
        let commit = committed(&mut events, &device).await;
        let seen = published(&mut local, &device).await;
        match (ack, commit, seen) {
            (Some(a), Some(c), Some(l)) => timelines.push(Alarm {
                puback: a - t0,
                committed: c - t0,
                local: l - t0,
                stored_at_puback,
            }),
            _ => {
                eprintln!("  {device}: PUBACK {ack:?}, commit {commit:?}, local {seen:?} (counted as lost)");
                lost += 1;
            }
        }
        tokio::time::sleep(SPACING).await;
    }
    (timelines, lost)
}

/// 2,000 heat detectors reporting `rate` readings per second in total until `stop`.
fn background_load(addr: std::net::SocketAddr, rate: usize, stop: Arc<AtomicBool>) {
    let publishers = 4;
    for p in 0..publishers {
        let (c, l) = client(addr, &format!("load-{p}"));
        spawn_loop(l, None);
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let per_tick = (rate / publishers / 100).max(1);
            let mut i = p;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                for _ in 0..per_tick {
                    let payload = format!(
                        r#"{{"temperature_c":{:.1},"battery_pct":88}}"#,
                        24.0 + (i % 7) as f64 * 0.1
                    );
                    let topic = format!("sensors/heat-{}/state", i % HEATS);
                    let _ = c.publish(topic, QoS::AtLeastOnce, false, payload).await;
                    i += publishers;
                }
            }
        });
    }
}

/// Signed milliseconds from `from` to `to`.
fn after(to: Duration, from: Duration) -> f64 {
    ms(to) - ms(from)
}

/// `p50 / p99 / max` of signed millisecond samples.
fn spread(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    let p = |q: f64| percentile(&v, q).unwrap_or(f64::NAN);
    format!("{:.2} / {:.2} / {:.2} ms", p(0.5), p(0.99), p(1.0))
}

fn rows(phase: &str, timelines: &[Alarm], lost: usize) {
    let of = |f: &dyn Fn(&Alarm) -> f64| spread(timelines.iter().map(f).collect());
    println!(
        "| {phase}: publish → PUBACK at the sensor | {} |",
        of(&|a| ms(a.puback))
    );
    println!(
        "| {phase}: PUBACK → the alert task's commit event seen by the bench (signed) | {} |",
        of(&|a| after(a.committed, a.puback))
    );
    println!(
        "| {phase}: **alarms already in the database when their PUBACK arrived** | {} of {} |",
        timelines.iter().filter(|a| a.stored_at_puback).count(),
        timelines.len()
    );
    println!(
        "| {phase}: PUBACK → alert received on the local alert topic | {} |",
        of(&|a| after(a.local, a.puback))
    );
    println!(
        "| {phase}: alarms lost (of {}) | {lost} |",
        timelines.len() + lost
    );
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let text = support::config(HEATS, 2 * ALARMS);
        let config = Arc::new(edge_config::parse(&text, "bench.toml", Path::new(".")).unwrap());
        let stages = Lifecycle::new();
        let db_path = dir.path().join("shouwang.db");
        let running = topology::start(config, &db_path, &stages).unwrap();
        let db = rusqlite::Connection::open_with_flags(
            &db_path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let addr = running.broker_addr.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;

        eprintln!("raw PUBACK…");
        let mut raw = raw_puback(addr).await;
        eprintln!("alarms, idle…");
        let (idle, idle_lost) = alarms(addr, &running, &db, (0, ALARMS)).await;
        eprintln!("alarms under {LOAD_RATE} readings/s…");
        let stop = Arc::new(AtomicBool::new(false));
        background_load(addr, LOAD_RATE, stop.clone());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (busy, busy_lost) = alarms(addr, &running, &db, (ALARMS, ALARMS)).await;
        stop.store(true, Ordering::Relaxed);

        raw.sort();
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        println!(
            "## acknowledgement window ({} cores, load {})",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            load.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        );
        println!("| measure (p50 / p99 / max) | result |\n|---|---|");
        println!(
            "| raw rumqttd: publish → PUBACK, QoS 1, topic no device owns | {} |",
            spread(raw.iter().map(|d| ms(*d)).collect())
        );
        rows("idle", &idle, idle_lost);
        rows(&format!("{LOAD_RATE} readings/s"), &busy, busy_lost);
        drop(running);
    });
}
