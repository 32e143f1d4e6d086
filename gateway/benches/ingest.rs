//! Ingest benchmark, one run, same machine, same embedded broker:
//!
//! 1. raw rumqttd routing: QoS 1 publisher → embedded broker → QoS 1 subscriber;
//! 2. sustained gateway ingest with every reading durable: N readings from 2,000 devices until
//!    all N telemetry rows are committed to the outbox;
//! 3. alarm latency p50/p99, sensor publish → alert received on the local alert topic, on an
//!    idle gateway and while one device floods at full speed (the `flood` scenario).
//!
//! Run: `cargo bench -p gateway --bench ingest` (release build). Figures go in the README.

mod support;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::shutdown::Lifecycle;
use gateway::topology;
use rumqttc::QoS;
use support::{client, ms, spawn_loop};
use tokio::sync::mpsc;

const DEVICES: usize = 2000;
const SMOKES: usize = 100;
/// Raw routing sample: 30,000 × 100 B, published in chunks of [`RAW_CHUNK`].
const RAW: usize = 30_000;
/// Messages published before the bench waits for the subscriber to have them all.
const RAW_CHUNK: usize = 1000;

/// Publish → subscriber latency p50 of 100 QoS 1 messages on one topic, then on 100 topics
/// the broker has never seen (rumqttd matches a new topic against every subscription filter:
/// with ingest's one filter per device that is the cost of, e.g., each new alert's topic).
async fn new_topic_cost(addr: std::net::SocketAddr) -> (Duration, Duration) {
    let (sub, sub_loop) = client(addr, "topics-sub");
    let (tx, mut rx) = mpsc::unbounded_channel();
    spawn_loop(sub_loop, Some(tx));
    sub.subscribe("bench/topics/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (publ, pub_loop) = client(addr, "topics-pub");
    spawn_loop(pub_loop, None);
    let mut p50 = [Duration::ZERO; 2];
    for (k, fresh) in [false, true].into_iter().enumerate() {
        let mut samples = Vec::new();
        for i in 0..100 {
            let topic = if fresh {
                format!("bench/topics/new-{i}")
            } else {
                "bench/topics/same".to_owned()
            };
            let t0 = Instant::now();
            publ.publish(topic, QoS::AtLeastOnce, false, "x")
                .await
                .unwrap();
            if tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .is_err()
            {
                continue;
            }
            samples.push(t0.elapsed());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        samples.sort();
        p50[k] = samples
            .get(samples.len() / 2)
            .copied()
            .unwrap_or(Duration::MAX);
    }
    (p50[0], p50[1])
}

async fn raw_routing(addr: std::net::SocketAddr) -> f64 {
    let (sub, sub_loop) = client(addr, "raw-sub");
    let (tx, mut rx) = mpsc::unbounded_channel();
    spawn_loop(sub_loop, Some(tx));
    sub.subscribe("bench/raw", QoS::AtLeastOnce).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (publ, pub_loop) = client(addr, "raw-pub");
    spawn_loop(pub_loop, None);
    let payload = vec![b'x'; 100];
    let start = Instant::now();
    let mut got = 0;
    eprintln!("  publishing {RAW}");
    // In chunks that fit one shared log (4 × 64 KiB, see broker/mod.rs "Memory"): a
    // subscriber further behind would miss the oldest, and the rate would not compare.
    for chunk in (0..RAW).step_by(RAW_CHUNK) {
        for _ in chunk..(chunk + RAW_CHUNK).min(RAW) {
            publ.publish("bench/raw", QoS::AtLeastOnce, false, payload.clone())
                .await
                .unwrap();
        }
        while got < (chunk + RAW_CHUNK).min(RAW) {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                Ok(Some(_)) => got += 1,
                _ => break,
            }
        }
    }
    assert_eq!(got, RAW, "raw routing lost messages");
    RAW as f64 / start.elapsed().as_secs_f64()
}

/// Publishes `rate` readings per second for `secs` seconds from 4 clients across all devices,
/// then waits until every one is durable. Returns (readings lost, seconds until durable).
async fn paced(
    addr: std::net::SocketAddr,
    running: &topology::Running,
    rate: usize,
    secs: usize,
) -> (u64, f64) {
    let before = running.telemetry_stats.committed.load(Ordering::Relaxed);
    let total = rate * secs;
    let publishers = 4;
    let start = Instant::now();
    for p in 0..publishers {
        let (c, l) = client(addr, &format!("load-{rate}-{p}"));
        spawn_loop(l, None);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let per_tick = (rate / publishers / 100).max(1);
            let mut i = p;
            while i < total {
                tick.tick().await;
                for _ in 0..per_tick {
                    if i >= total {
                        break;
                    }
                    let device = i % DEVICES;
                    let payload = format!(
                        r#"{{"temperature_c":{:.1},"battery_pct":88}}"#,
                        24.0 + (i % 7) as f64 * 0.1
                    );
                    let _ = c
                        .publish(
                            format!("sensors/heat-{device}/state"),
                            QoS::AtLeastOnce,
                            false,
                            payload,
                        )
                        .await;
                    i += publishers;
                }
            }
        });
    }
    let mut last = (0, Instant::now());
    loop {
        let done = running.telemetry_stats.committed.load(Ordering::Relaxed) - before;
        if done >= total as u64 {
            return (0, start.elapsed().as_secs_f64());
        }
        if done != last.0 {
            last = (done, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(5) {
            return (total as u64 - done, start.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Steps the offered rate up; returns rows (rate, lost, durable rate) for each step.
async fn sustained(
    addr: std::net::SocketAddr,
    running: &topology::Running,
) -> Vec<(usize, u64, f64)> {
    let mut rows = Vec::new();
    for rate in [2_000, 5_000, 10_000, 20_000, 40_000] {
        let secs = 5;
        let (lost, took) = paced(addr, running, rate, secs).await;
        let durable = (rate * secs) as f64 - lost as f64;
        rows.push((rate, lost, durable / took));
        eprintln!(
            "  offered {rate}/s: lost {lost}, durable {:.0}/s",
            durable / took
        );
        if lost > 0 {
            break;
        }
    }
    rows
}

/// Where alerts appear: the gateway's local alert topics, or the glue script's.
const GATEWAY_ALERTS: &str = "shouwang/bench/alerts/#";
const GLUE_ALERTS: &str = "glue/alerts/#";

async fn alarm_latency(
    addr: std::net::SocketAddr,
    config: &edge_config::Config,
    (first, count): (usize, usize),
    flood: bool,
    alerts: &str,
) -> (Duration, Duration, usize) {
    let (watch, watch_loop) = client(addr, &format!("latency-watch-{first}"));
    let (tx, mut rx) = mpsc::unbounded_channel();
    spawn_loop(watch_loop, Some(tx));
    watch.subscribe(alerts, QoS::AtLeastOnce).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (sensor, sensor_loop) = client(addr, &format!("latency-sensor-{first}"));
    spawn_loop(sensor_loop, None);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if flood {
        let stop = stop.clone();
        // The simulators' `flood` scenario traffic for one device, replayed at full speed by
        // a thread and runtime of its own (a device elsewhere on the LAN): sharing the
        // bench's runtime, it delayed the alarm sensor's own publishes by ~15 ms.
        let messages = simulators::sensors::flood_messages(config, "heat-0", 7, 10_000)
            .expect("heat-0 is in the bench config");
        let id = format!("flooder-{first}");
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (f, fl) = client(addr, &id);
                spawn_loop(fl, None);
                for (topic, payload) in messages.iter().cycle() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let _ = f
                        .publish(topic.as_str(), QoS::AtMostOnce, false, payload.clone())
                        .await;
                }
            });
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut samples = Vec::new();
    let mut lost = 0;
    for i in first..first + count {
        let id = format!("smoke-{i}");
        let t0 = Instant::now();
        sensor
            .publish(
                format!("sensors/{id}/state"),
                QoS::AtLeastOnce,
                false,
                r#"{"smoke":true}"#,
            )
            .await
            .unwrap();
        // An alarm that never arrives is counted as lost (not waited for forever).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let Ok(Some((_, payload))) = tokio::time::timeout_at(deadline, rx.recv()).await else {
                eprintln!("  {id}: no alert within 10 s (counted as lost)");
                lost += 1;
                break;
            };
            let v: serde_json::Value = serde_json::from_slice(&payload).unwrap_or_default();
            if v["source"]["id"] == id.as_str() && v["event"] == "raised" {
                if t0.elapsed() > Duration::from_secs(1) {
                    eprintln!("  {id}: alert after {:?}", t0.elapsed());
                }
                samples.push(t0.elapsed());
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    samples.sort();
    let pct = |p: f64| {
        if samples.is_empty() {
            Duration::MAX
        } else {
            samples[((samples.len() - 1) as f64 * p).round() as usize]
        }
    };
    (pct(0.5), pct(0.99), lost)
}

/// The glue-script peer (`benches/peers/glue.py` on a Debian mosquitto) through the same two
/// alarm phases: (p50, p99, lost) idle, then while one device floods.
async fn glue_peer(dir: &Path, config: &edge_config::Config) -> [(Duration, Duration, usize); 2] {
    let broker = support::PlainMosquitto::start(dir);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers/glue.py");
    let mut child = std::process::Command::new(support::debian_python())
        .arg(&script)
        .args(["127.0.0.1", &broker.port.to_string()])
        .arg(dir.join("glue.db"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the glue script (python3-paho-mqtt: ./x deps)");
    let mut ready = String::new();
    let stdout = child.stdout.take().expect("piped stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut ready).unwrap();
    assert_eq!(ready.trim(), "ready", "the glue script did not start");
    let addr = broker.addr();
    let idle = alarm_latency(addr, config, (0, SMOKES / 2), false, GLUE_ALERTS).await;
    let flood = alarm_latency(addr, config, (SMOKES / 2, SMOKES / 2), true, GLUE_ALERTS).await;
    let _ = child.kill();
    let _ = child.wait();
    [idle, flood]
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let config = Arc::new(edge_config::parse(&support::config(DEVICES, SMOKES), "bench.toml", Path::new(".")).unwrap());
        let stages = Lifecycle::new();
        let running = topology::start(config.clone(), &dir.path().join("shouwang.db"), &stages).unwrap();
        let addr = running.broker_addr.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;

        // `INGEST_BENCH=flood` runs only the alarm latency phases (for quick checks).
        let quick = std::env::var("INGEST_BENCH").is_ok_and(|v| v == "flood");
        eprintln!("raw routing…");
        let raw = if quick { f64::NAN } else { raw_routing(addr).await };
        eprintln!("sustained ingest…");
        let ingest = if quick { Vec::new() } else { sustained(addr, &running).await };
        eprintln!("new-topic cost…");
        let (same_topic, new_topic) = new_topic_cost(addr).await;
        eprintln!("alarm latency…");
        let (idle_p50, idle_p99, idle_lost) = alarm_latency(addr, &config, (0, SMOKES / 2), false, GATEWAY_ALERTS).await;
        eprintln!("alarm latency under flood…");
        let (flood_p50, flood_p99, flood_lost) = alarm_latency(addr, &config, (SMOKES / 2, SMOKES / 2), true, GATEWAY_ALERTS).await;
        eprintln!("the glue script (mosquitto + Python + SQLite FULL), same alarms…");
        let glue = glue_peer(dir.path(), &config).await;
        let stats = running.ingest_stats.snapshot();
        println!("## ingest benchmark ({} cores)", std::thread::available_parallelism().map_or(0, |n| n.get()));
        println!("| measure | result |");
        println!("|---|---|");
        println!("| raw rumqttd routing, QoS 1, 100 B, {RAW} msgs | {raw:.0} msg/s |");
        for (rate, lost, durable) in &ingest {
            println!("| gateway ingest offered {rate} msg/s for 5 s from {DEVICES} devices, every reading durable in the outbox | {durable:.0} msg/s durable, {lost} lost |");
        }
        let best = ingest.iter().filter(|r| r.1 == 0).map(|r| r.2).fold(0.0, f64::max);
        println!("| highest lossless sustained ingest / raw routing | {:.2} |", best / raw);
        println!("| alarm latency, publish → local alert, idle: p50 / p99 (lost of {}) | {:.1} ms / {:.1} ms ({idle_lost}) |", SMOKES / 2, ms(idle_p50), ms(idle_p99));
        println!("| alarm latency while one device floods: p50 / p99 (lost of {}) | {:.1} ms / {:.1} ms ({flood_lost}) |", SMOKES / 2, ms(flood_p50), ms(flood_p99));
        let ratio = |gw: Duration, peer: Duration| peer.as_secs_f64() / gw.as_secs_f64();
        println!("| glue script, idle: p50 / p99 (lost of {}) | {:.1} ms / {:.1} ms ({}) |", SMOKES / 2, ms(glue[0].0), ms(glue[0].1), glue[0].2);
        println!("| glue script while one device floods: p50 / p99 (lost of {}) | {:.1} ms / {:.1} ms ({}) |", SMOKES / 2, ms(glue[1].0), ms(glue[1].1), glue[1].2);
        println!("| glue script p99 / gateway p99 (above 1: the gateway is faster), idle / flood | {:.2} / {:.2} |", ratio(idle_p99, glue[0].1), ratio(flood_p99, glue[1].1));
        println!("| flood messages throttled (counted rejections) | {} |", stats.rejected_by_reason.get("throttled").copied().unwrap_or(0));
        println!("| flood messages dropped by the broker from the flooder's own log (counted) | {} |", stats.rejected_by_reason.get("broker_overrun").copied().unwrap_or(0));
        println!("| publish → subscriber p50 with {} device topics subscribed: same topic / never-seen topic | {:.2} ms / {:.2} ms |", config.devices.len() * 2, ms(same_topic), ms(new_topic));
        drop(running);
    });
}
