//! Store-and-forward, end to end: the real `gateway` binary forwarding its outbox over TLS
//! with a password to a real Debian mosquitto on a free loopback port, while the test cuts
//! the link, SIGKILLs the gateway, squeezes the disk quota and sends platform commands. A
//! collector subscribed upstream judges what arrived (gaps, duplicates, order).

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::mqtt::Mqtt;
use e2e::upstream::{seed_outbox, Collector, Upstream};
use e2e::{eventually, reached, write_config, Gateway};
use gateway::outbox::Class;
use rumqttc::QoS;
use serde_json::Value;

const SITE: &str = r#"
[[locations.buildings]]
id = "b1"
name = "1号楼"
floors = 18

[rules.timing]
debounce_s = 0
clear_hold_s = 1
"#;

/// `n` gas detectors `g00`… in building b1.
fn gas_devices(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!("[[devices]]\nid = \"g{i:02}\"\nkind = \"gas\"\nlocation = {{ building = \"b1\", floor = {} }}\n", i % 18 + 1)
        })
        .collect()
}

const SMOKE: &str = r#"
[[devices]]
id = "smoke-1"
kind = "smoke"
location = { building = "b1", floor = 3 }
"#;

struct Site {
    dir: tempfile::TempDir,
    config: PathBuf,
    data: PathBuf,
}

impl Site {
    fn new(upstream: &Upstream, devices: &str, extra: &str) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let body = format!(
            "{SITE}\n{extra}\n{}\n{devices}",
            upstream.uplink_toml("gw.pass")
        );
        let config = write_config(dir.path(), &body);
        let data = dir.path().join("data");
        Site { dir, config, data }
    }

    fn db(&self) -> PathBuf {
        self.data.join("shouwang.db")
    }

    fn start(&self) -> Gateway {
        Gateway::start(&self.config, &self.data)
    }
}

/// Whether a log line with this `message` was already seen, else waits for it.
fn saw_or_wait(gw: &mut Gateway, message: &str, timeout: Duration) -> Value {
    gw.drain_log();
    if let Some(v) = gw
        .seen
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == message)
    {
        return v;
    }
    gw.wait_for_message(message, timeout)
}

fn count_rows(db: &Path, sql: &str) -> i64 {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

fn is_seeded(r: &e2e::upstream::Received) -> bool {
    r.json["origin"] == "seeded"
}

#[tokio::test(flavor = "multi_thread")]
async fn a_link_cut_while_a_thousand_alerts_are_raised_loses_none_and_keeps_seq_order() {
    let tmp = tempfile::tempdir().unwrap();
    let mut upstream = Upstream::start(tmp.path());
    let collector = Collector::start(&upstream, "platform-linkcut").await;
    let site = Site::new(&upstream, &gas_devices(20), "");
    let mut gw = site.start();
    let broker = gw.wait_ready();
    saw_or_wait(&mut gw, "uplink connected", Duration::from_secs(20));

    upstream.stop();
    saw_or_wait(&mut gw, "uplink connection failed", Duration::from_secs(20));

    // 20 detectors × 50 readings alternating orange/red: 1 raise + 49 updates each.
    let sensors = Mqtt::connect(broker, "gas-sensors").await;
    for reading in 0..50 {
        let lel = if reading % 2 == 0 { 12.5 } else { 30.0 };
        for d in 0..20 {
            sensors
                .publish(
                    &format!("sensors/g{d:02}/state"),
                    format!(r#"{{"gas_lel_pct":{lel}}}"#),
                )
                .await;
        }
    }
    eventually(
        Duration::from_secs(60),
        "the gateway records 1000 alert events",
        || {
            reached(
                count_rows(&site.db(), "SELECT COUNT(*) FROM alert_events") as u64,
                1000,
            )
        },
    )
    .await;
    assert_eq!(
        count_rows(&site.db(), "SELECT COUNT(*) FROM alert_events"),
        1000
    );
    assert!(
        collector.alerts().is_empty(),
        "nothing can arrive while the link is cut"
    );
    let stored_max: i64 = count_rows(&site.db(), "SELECT MAX(seq) FROM alert_events");

    upstream.restart();
    let all = collector
        .wait_until(Duration::from_secs(90), |a| {
            a.iter()
                .map(|r| r.seq)
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                >= 1000
        })
        .await;
    let report = collector.report(1..=stored_max as u64, |_| true);
    assert!(all, "not all alerts arrived: {report}");
    assert!(report.absent.is_empty(), "missing: {:?}", report.absent);
    assert!(
        report.reordered.is_empty(),
        "out of order: {:?}",
        report.reordered
    );
    assert_eq!(report.unique, 1000);
    eprintln!(
        "link cut: {} received, {} distinct, {} duplicates",
        report.received, report.unique, report.duplicates
    );
    // Every payload carries the alert's id and seq, so upstream can de-duplicate.
    assert!(collector.alerts().iter().all(|r| r.json["id"].is_string()));

    let status = eventually(Duration::from_secs(20), "the alarm backlog drains", || {
        let status = gateway::status::status_report(&site.data).map_err(|e| e.to_string())?;
        match status.outbox.backlog_by_class.alarm {
            0 => Ok(status),
            _ => Err(status.to_string()),
        }
    })
    .await;
    assert!(status.outbox.delivered_total >= 1000, "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_a_drain_again_and_again_loses_no_alert() {
    const ROWS: u64 = 40_000;
    let tmp = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(tmp.path());
    let collector = Collector::start(&upstream, "platform-crash").await;
    let site = Site::new(&upstream, "", "");
    let rows: Vec<_> = (1..=ROWS).map(|s| (Class::Alarm, Some(s))).collect();
    seed_outbox(&site.db(), &rows, 200);

    let mut kills = 0;
    for round in 0..6_u64 {
        let before = collector.distinct_seqs(is_seeded).len() as u64;
        let mut gw = site.start();
        gw.wait_ready();
        saw_or_wait(&mut gw, "uplink connected", Duration::from_secs(20));
        // Let it drain a little (further each round), then pull the plug: in the middle of
        // the drain, whatever the machine's speed.
        let mid_drain = before + 300 + 200 * round;
        let at_kill = eventually(
            Duration::from_secs(30),
            &format!("round {round}: the drain delivers {mid_drain} alerts"),
            || reached(collector.distinct_seqs(is_seeded).len() as u64, mid_drain),
        )
        .await;
        gw.signal(libc::SIGKILL);
        assert!(
            gw.wait_exit(Duration::from_secs(10)).is_some(),
            "gateway survived SIGKILL"
        );
        assert!(
            at_kill < ROWS,
            "round {round}: the drain finished before the kill; seed more rows"
        );
        eprintln!("round {round}: {before} → {at_kill} delivered when killed");
        kills += 1;
    }
    assert!(kills >= 5);

    let mut gw = site.start();
    gw.wait_ready();
    let all = collector
        .wait_until(Duration::from_secs(120), |a| {
            a.iter()
                .map(|r| r.seq)
                .collect::<std::collections::BTreeSet<_>>()
                .len() as u64
                >= ROWS
        })
        .await;
    let report = collector.report(1..=ROWS, is_seeded);
    assert!(
        all,
        "not every alert arrived after the final restart: {} missing",
        report.absent.len()
    );
    assert!(
        report.absent.is_empty(),
        "missing: {:?}",
        &report.absent[..report.absent.len().min(20)]
    );
    assert!(
        report.reordered.is_empty(),
        "out of order: {:?}",
        &report.reordered[..report.reordered.len().min(20)]
    );
    eprintln!(
        "crash: {} received, {} distinct, {} duplicates after {kills} SIGKILLs",
        report.received, report.unique, report.duplicates
    );
    drop(gw);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tiny_quota_evicts_telemetry_first_delivers_every_red_alert_and_raises_buffer_full() {
    const RED: u64 = 4_500;
    let tmp = tempfile::tempdir().unwrap();
    let mut upstream = Upstream::start(tmp.path());
    let collector = Collector::start(&upstream, "platform-quota").await;
    upstream.stop();
    let site = Site::new(&upstream, SMOKE, "[storage]\nquota_mb = 16\n");

    // ~6.6 MB telemetry, 200 blue + 200 yellow, then ~18 MB of red: more than 16 MB of red alone.
    let mut rows: Vec<(Class, Option<u64>)> =
        (0..6_000).map(|_| (Class::Telemetry, None)).collect();
    rows.extend((0..200).map(|i| (Class::Notice, Some(900_000 + i))));
    rows.extend((0..200).map(|i| (Class::Warning, Some(950_000 + i))));
    seed_outbox(&site.db(), &rows, 1_000);
    let reds: Vec<_> = (1..=RED)
        .map(|i| (Class::Alarm, Some(1_000_000 + i)))
        .collect();
    seed_outbox(&site.db(), &reds, 4_000);

    let mut gw = site.start();
    let broker = gw.wait_ready();
    saw_or_wait(
        &mut gw,
        "outbox full: only red/orange alerts remain and they exceed storage.quota_mb; they are kept, raising buffer_full",
        Duration::from_secs(20),
    );
    // A live red alert on top: kept too.
    let smoke = Mqtt::connect(broker, "smoke-1").await;
    smoke
        .publish("sensors/smoke-1/state", r#"{"smoke":true}"#)
        .await;

    let status = eventually(
        Duration::from_secs(20),
        "buffer_full and the smoke alert in the status",
        || {
            let s = gateway::status::status_report(&site.data).map_err(|e| e.to_string())?;
            if s.link.as_ref().is_some_and(|l| l.buffer_full)
                && s.outbox.backlog_by_class.alarm >= RED + 2
            {
                Ok(s)
            } else {
                Err(s.to_string())
            }
        },
    )
    .await;
    let evicted = status.outbox.evicted_by_class;
    // Every seeded telemetry row, plus any the live gateway wrote meanwhile (the smoke
    // reading itself is telemetry, and may be evicted too).
    assert!(evicted.telemetry >= 6_000, "{status}");
    assert_eq!((evicted.notice, evicted.warning), (200, 200), "{status}");
    assert_eq!(
        count_rows(
            &site.db(),
            "SELECT COUNT(*) FROM outbox WHERE class = 3 AND CAST(payload AS TEXT) LIKE '%\"origin\":\"seeded\"%'"
        ),
        0,
        "seeded telemetry must be gone"
    );
    assert_eq!(
        count_rows(
            &site.db(),
            "SELECT COUNT(*) FROM alerts WHERE kind = 'buffer_full' AND active = 1"
        ),
        1
    );
    println!("{status}");

    upstream.restart();
    let delivered = collector
        .wait_until(Duration::from_secs(120), |a| {
            a.iter()
                .filter(|r| is_seeded(r))
                .map(|r| r.seq)
                .collect::<std::collections::BTreeSet<_>>()
                .len() as u64
                >= RED
                && a.iter()
                    .any(|r| r.json["kind"] == "buffer_full" && r.json["event"] == "resolved")
                && a.iter().any(|r| r.json["kind"] == "smoke")
        })
        .await;
    let report = collector.report((1..=RED).map(|i| 1_000_000 + i), is_seeded);
    assert!(
        delivered,
        "red alerts missing upstream: {} missing",
        report.absent.len()
    );
    assert!(report.absent.is_empty());
    let alerts = collector.alerts();
    assert!(alerts
        .iter()
        .any(|r| r.json["kind"] == "buffer_full" && r.json["event"] == "raised"));
    assert!(
        alerts
            .iter()
            .filter(|r| is_seeded(r))
            .all(|r| r.json["level"] == "red"),
        "evicted yellow/blue rows must not arrive"
    );
    assert!(
        collector
            .telemetry()
            .iter()
            .all(|t| t["origin"] != "seeded"),
        "evicted telemetry must not arrive"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn after_an_outage_red_and_orange_drain_before_yellow_blue_and_telemetry() {
    let tmp = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(tmp.path());
    let collector = Collector::start(&upstream, "platform-priority").await;
    let site = Site::new(&upstream, "", "");
    // Enqueued in the worst order: telemetry first, red last.
    let mut rows: Vec<(Class, Option<u64>)> = (0..300).map(|_| (Class::Telemetry, None)).collect();
    rows.extend((1..=300).map(|i| (Class::Notice, Some(i))));
    rows.extend((301..=600).map(|i| (Class::Warning, Some(i))));
    rows.extend((601..=900).map(|i| (Class::Alarm, Some(i))));
    seed_outbox(&site.db(), &rows, 100);

    let mut gw = site.start();
    gw.wait_ready();
    eventually(Duration::from_secs(60), "1200 messages arrive", || {
        reached(collector.order().len() as u64, 1200)
    })
    .await;
    let rank = |(stream, level): &(String, String)| match (stream.as_str(), level.as_str()) {
        ("alerts", "red" | "orange") => 0,
        ("alerts", "yellow") => 1,
        ("alerts", "blue") => 2,
        _ => 3,
    };
    let ranks: Vec<_> = collector.order().iter().map(rank).collect();
    assert!(
        ranks.windows(2).all(|w| w[0] <= w[1]),
        "drain order by priority violated: {ranks:?}"
    );
    let report = collector.report(601..=900, |r| r.json["level"] == "red");
    assert!(
        report.absent.is_empty() && report.reordered.is_empty(),
        "{report}"
    );
    drop(gw);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_platform_ack_command_acknowledges_the_alert_on_the_gateway() {
    let tmp = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(tmp.path());
    let collector = Collector::start(&upstream, "platform-commands").await;
    let site = Site::new(&upstream, SMOKE, "");
    let mut gw = site.start();
    let broker = gw.wait_ready();
    saw_or_wait(&mut gw, "uplink connected", Duration::from_secs(20));

    let smoke = Mqtt::connect(broker, "smoke-1").await;
    smoke
        .publish("sensors/smoke-1/state", r#"{"smoke":true}"#)
        .await;
    assert!(
        collector
            .wait_until(Duration::from_secs(20), |a| a
                .iter()
                .any(|r| r.json["kind"] == "smoke"))
            .await,
        "the smoke alert never arrived upstream"
    );
    let id = collector
        .alerts()
        .iter()
        .find(|r| r.json["kind"] == "smoke")
        .unwrap()
        .json["id"]
        .clone();
    collector
        .client
        .publish(
            "shouwang/test-site/commands/ack",
            QoS::AtLeastOnce,
            false,
            serde_json::json!({ "id": id, "by": "platform-duty" }).to_string(),
        )
        .await
        .unwrap();
    let acked = collector
        .wait_until(Duration::from_secs(20), |a| {
            a.iter().any(|r| {
                r.json["id"] == id
                    && r.json["event"] == "acknowledged"
                    && r.json["acknowledged_by"] == "platform-duty"
            })
        })
        .await;
    assert!(
        acked,
        "no acknowledged event upstream; log:\n{}",
        gw.seen.join("\n")
    );
    let state = count_rows(
        &site.db(),
        &format!(
            "SELECT COUNT(*) FROM alerts WHERE id = '{}' AND state = 'acknowledged'",
            id.as_str().unwrap()
        ),
    );
    assert_eq!(state, 1);
    let _ = site.dir.path();
}

#[tokio::test(flavor = "multi_thread")]
async fn with_qos_2_a_backlog_arrives_exactly_once_and_a_broker_restart_mid_drain_loses_nothing() {
    const ROWS: u64 = 3_000;
    let tmp = tempfile::tempdir().unwrap();
    let mut upstream = Upstream::start(tmp.path());
    let collector = Collector::start(&upstream, "platform-qos2").await;
    let site = Site::new(&upstream, "", "");
    let text = std::fs::read_to_string(&site.config).unwrap();
    assert!(text.contains("keep_alive_s = 5\n"));
    std::fs::write(
        &site.config,
        text.replace("keep_alive_s = 5\n", "keep_alive_s = 5\nqos = 2\n"),
    )
    .unwrap();

    // First backlog: drained over one connection, every alert exactly once.
    let rows: Vec<_> = (1..=ROWS).map(|s| (Class::Alarm, Some(s))).collect();
    seed_outbox(&site.db(), &rows, 200);
    let mut gw = site.start();
    let starting = saw_or_wait(&mut gw, "uplink starting", Duration::from_secs(20));
    assert_eq!(starting["qos"], 2, "{starting}");
    gw.wait_ready();
    let got_all = |n: u64| {
        move |a: &[e2e::upstream::Received]| {
            a.iter()
                .filter(|r| is_seeded(r))
                .map(|r| r.seq)
                .collect::<std::collections::BTreeSet<_>>()
                .len() as u64
                >= n
        }
    };
    assert!(
        collector
            .wait_until(Duration::from_secs(60), got_all(ROWS))
            .await,
        "the QoS 2 backlog did not arrive: {}",
        collector.report(1..=ROWS, is_seeded)
    );
    let report = collector.report(1..=ROWS, is_seeded);
    assert!(
        report.absent.is_empty() && report.reordered.is_empty(),
        "{report}"
    );
    assert_eq!(
        report.duplicates, 0,
        "QoS 2 over one connection: exactly once"
    );
    let drained = |data: &Path| {
        let status = gateway::status::status_report(data).map_err(|e| e.to_string())?;
        match status.outbox.backlog_total {
            0 => Ok(()),
            _ => Err(status.to_string()),
        }
    };
    eventually(
        Duration::from_secs(20),
        "no row stays in the outbox after PUBCOMP",
        || drained(&site.data),
    )
    .await;
    gw.signal(libc::SIGTERM);
    assert!(gw.wait_exit(Duration::from_secs(10)).is_some());

    // Second backlog: the platform's broker restarts in the middle of the drain.
    let more: Vec<_> = (ROWS + 1..=2 * ROWS)
        .map(|s| (Class::Alarm, Some(s)))
        .collect();
    seed_outbox(&site.db(), &more, 200);
    let mut gw = site.start();
    gw.wait_ready();
    assert!(
        collector
            .wait_until(Duration::from_secs(30), got_all(ROWS + 200))
            .await,
        "the second backlog did not start draining"
    );
    upstream.restart();
    assert!(
        collector
            .wait_until(Duration::from_secs(90), got_all(2 * ROWS))
            .await,
        "alerts lost across the broker restart: {}",
        collector.report(1..=2 * ROWS, is_seeded)
    );
    let report = collector.report(1..=2 * ROWS, is_seeded);
    assert!(report.absent.is_empty(), "missing: {:?}", report.absent);
    eprintln!(
        "qos 2 restart: {} duplicates re-sent after the reconnect",
        report.duplicates
    );
    eventually(
        Duration::from_secs(30),
        "no row stays in the outbox after the restart",
        || drained(&site.data),
    )
    .await;
    drop(gw);
}
