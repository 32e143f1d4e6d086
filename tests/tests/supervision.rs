//! Never deaf, never silent about it: the real `gateway` binary attacked from the sensor
//! network and broken from inside (the test-only fault injection of `gateway::supervise`),
//! with Debian's mosquitto as the platform upstream.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::mqtt::Mqtt;
use e2e::upstream::{Collector, Received, Upstream};
use e2e::Gateway;
use rumqttc::MqttOptions;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);

const SITE: &str = r#"
[[broker.readers]]
username = "alert-board"
password = "board-secret"
topics = ["shouwang/#"]
[[broker.readers]]
username = "b1-display"
password = "display-secret"
topics = ["residents/b1/#"]

[[locations.buildings]]
id = "b1"
name = "1号楼"
floors = 18
[[locations.buildings.units]]
id = "u1"
name = "1单元"

[rules.timing]
debounce_s = 0
clear_hold_s = 1
escalate_after_s = 600

[supervision]
self_test_period_s = 1
self_test_timeout_s = 3

[[devices]]
id = "b1-smoke"
kind = "smoke"
location = { building = "b1", unit = "u1", floor = 3, room = "301" }
username = "b1-smoke"
password = "smoke-secret"
[[devices]]
id = "b1-gas"
kind = "gas"
location = { building = "b1", unit = "u1", floor = 5, room = "501" }
username = "b1-gas"
password = "gas-secret"
[[devices]]
id = "b1-siren"
kind = "siren"
location = { building = "b1" }
username = "b1-siren"
password = "siren-secret"
[[rules.linkage]]
on = "smoke"
min_level = "red"
action = "sound_siren"
targets = ["b1-siren"]
"#;

/// A gateway on loopback with `broker_extra` in its `[broker]` table and `extra` appended.
struct Site {
    _dir: tempfile::TempDir,
    data: PathBuf,
    faults: PathBuf,
    gateway: Gateway,
    broker: SocketAddr,
}

impl Site {
    fn start(broker_extra: &str, extra: &str) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[site]\nid = \"test-site\"\nname = \"Test\"\nkind = \"compound\"\n\n[broker]\n\
             bind = \"127.0.0.1:0\"\n{broker_extra}\n\n[console]\nbind = \"127.0.0.1:0\"\n\n\
             {SITE}\n{extra}\n"
        );
        let config = dir.path().join("gateway.toml");
        std::fs::write(&config, text).unwrap();
        let (data, faults) = (dir.path().join("data"), dir.path().join("faults"));
        std::fs::create_dir_all(&faults).unwrap();
        let mut command = Command::new(e2e::bin("gateway"));
        command
            .args(["--log-format", "json", "run", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .env(gateway::supervise::FAULT_INJECTION_ENV, &faults);
        let mut gateway = Gateway::spawn(command);
        let broker = gateway.wait_ready();
        Site {
            _dir: dir,
            data,
            faults,
            gateway,
            broker,
        }
    }

    /// A client logged in as a device (or anonymous when `user` is empty).
    async fn client(&self, id: &str, user: &str, password: &str) -> Mqtt {
        let mut o = MqttOptions::new(id, self.broker.ip().to_string(), self.broker.port());
        if !user.is_empty() {
            o.set_credentials(user, password);
        }
        Mqtt::connect_with(o).await
    }

    async fn smoke(&self) -> Mqtt {
        self.client("b1-smoke", "b1-smoke", "smoke-secret").await
    }

    fn inject(&self, stage: &str, how: &str) -> PathBuf {
        let path = self.faults.join(format!("{stage}.{how}"));
        std::fs::write(&path, b"").unwrap();
        path
    }

    /// `gateway status --json` of this gateway.
    fn status(&self) -> Value {
        let out = Command::new(e2e::bin("gateway"))
            .args(["status", "--json", "--data-dir"])
            .arg(&self.data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Polls `gateway status --json` until `done` holds; panics with the last report.
    async fn status_until(&self, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status();
            if done(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "status never got there: {s:#}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn is(kind: &'static str, event: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["kind"] == kind && v["event"] == event
}

async fn watcher(site: &Site, id: &str) -> Mqtt {
    // Device logins read only their own command topics: the alert board has a reader login.
    let w = site.client(id, "alert-board", "board-secret").await;
    w.subscribe("shouwang/test-site/alerts/#").await;
    w
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_reusing_an_internal_client_id_cannot_silence_ingest() {
    let site = Site::start("", "");
    let mut w = watcher(&site, "w-reuse").await;
    // Every client id the gateway's own clients and links used to have, connected and left
    // connected by someone holding devices' passwords (two logins: each login may hold only
    // a few connections): rumqttd drops the older session of a reused id.
    let mut squatters = Vec::new();
    let logins = [("b1-gas", "gas-secret"), ("b1-siren", "siren-secret")];
    for (i, role) in [
        "ingest-devices",
        "ingest-watch",
        "publisher",
        "actuators",
        "residents",
        "ingest",
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("shouwang-test-site-{role}");
        let (user, password) = logins[i % 2];
        squatters.push(site.client(&id, user, password).await);
    }
    site.smoke()
        .await
        .publish("sensors/b1-smoke/state", r#"{"smoke":true}"#)
        .await;
    let raised = w.collect(1, WAIT, is("smoke", "raised")).await;
    assert_eq!(raised.len(), 1, "the smoke alarm still raises an alert");
    let status = site
        .status_until(WAIT, |s| !s["self_test"]["last_ok_at"].is_null())
        .await;
    assert!(
        status["stages"]
            .as_object()
            .unwrap()
            .values()
            .all(|s| s["faulted_since"].is_null()),
        "{status:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn resident_notices_are_sent_when_the_broker_requires_auth() {
    let site = Site::start("require_auth = true", "");
    // Resident notices are readable only by a login granted them (a reader of residents/b1/#).
    let residents = site
        .client("resident-app", "b1-display", "display-secret")
        .await;
    residents.subscribe("residents/b1/u1/alerts").await;
    let mut residents = residents;
    site.client("b1-gas", "b1-gas", "gas-secret")
        .await
        .publish("sensors/b1-gas/state", r#"{"gas_lel_pct":45}"#)
        .await;
    let notice = residents.collect(1, WAIT, |v| v["kind"] == "gas").await;
    assert_eq!(notice.len(), 1, "a gas notice reaches the unit's residents");
    assert_eq!(notice[0]["status"], "active", "{}", notice[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_invalid_messages_do_not_throttle_away_a_real_alarm() {
    let site = Site::start("", "");
    let mut w = watcher(&site, "w-throttle").await;
    let smoke = site.smoke().await;
    for _ in 0..200 {
        smoke.publish("sensors/b1-smoke/state", "{not json").await;
    }
    smoke
        .publish("sensors/b1-smoke/state", r#"{"smoke":true}"#)
        .await;
    let raised = w.collect(1, WAIT, is("smoke", "raised")).await;
    assert_eq!(
        raised.len(),
        1,
        "the alarm after 200 invalid messages raises"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_repeats_does_not_throttle_away_the_change_that_follows() {
    let site = Site::start("", "");
    let mut w = watcher(&site, "w-repeats").await;
    let smoke = site.smoke().await;
    // 300 repeats at ~500 a second: three times the throttle's burst, at the pace of a
    // misbehaving device rather than all in one go, which the broker's small per-device log
    // would mostly drop (counted as `broker_overrun`) before ingest's throttle saw them.
    for _ in 0..300 {
        smoke
            .publish("sensors/b1-smoke/state", r#"{"smoke":false}"#)
            .await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    smoke
        .publish("sensors/b1-smoke/state", r#"{"smoke":true}"#)
        .await;
    let raised = w.collect(1, WAIT, is("smoke", "raised")).await;
    assert_eq!(
        raised.len(),
        1,
        "the change of state passes an empty bucket"
    );
    let status = site
        .status_until(WAIT, |s| {
            s["ingest"]["rejected_by_reason"]["throttled"].as_u64() > Some(0)
        })
        .await;
    assert!(status["ingest"]["rejected_by_reason"]["throttled"].as_u64() >= Some(100));
}

fn fault_events(alerts: &[Received], stage: &str, event: &str) -> usize {
    alerts
        .iter()
        .filter(|r| {
            r.json["kind"] == "gateway_fault"
                && r.json["source"]["id"] == stage
                && r.json["event"] == event
        })
        .count()
}

/// Waits until the platform got a `gateway_fault` of `stage` raised and then resolved.
async fn fault_raised_and_resolved(collector: &Collector, stage: &str, level: &str) {
    let raised = collector
        .wait_until(Duration::from_secs(30), |a| {
            fault_events(a, stage, "raised") >= 1
        })
        .await;
    assert!(raised, "no gateway_fault for {stage} reached the platform");
    let r = collector.alerts();
    let first = r
        .iter()
        .find(|r| r.json["kind"] == "gateway_fault" && r.json["source"]["id"] == stage)
        .unwrap();
    assert_eq!(first.json["level"], level, "{}", first.json);
    let resolved = collector
        .wait_until(Duration::from_secs(30), |a| {
            fault_events(a, stage, "resolved") >= 1
        })
        .await;
    assert!(resolved, "the gateway_fault for {stage} never resolved");
}

fn smoke_raises(alerts: &[Received]) -> usize {
    alerts
        .iter()
        .filter(|r| r.json["kind"] == "smoke" && r.json["event"] == "raised")
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_stage_that_crashes_is_signalled_upstream_restarted_and_an_alarm_meanwhile_arrives() {
    let tmp = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(tmp.path());
    let collector = Collector::start(&upstream, "platform-chaos").await;
    let site = Site::start("", &upstream.uplink_toml("gw.pass"));
    let smoke = site.smoke().await;
    let alarm_path = ["ingest", "rules", "alerts", "uplink", "self_test_probe"];
    let degraded = [
        "telemetry",
        "publisher",
        "residents",
        "actuators",
        "housekeeping",
    ];
    for (i, stage) in alarm_path.iter().chain(&degraded).enumerate() {
        site.inject(stage, "panic");
        // Readings and alert events give every stage a step to crash at: a smoke alarm now,
        // during the outage, cleared again once it arrived.
        smoke
            .publish("sensors/b1-smoke/state", r#"{"smoke":true}"#)
            .await;
        let level = if alarm_path.contains(stage) {
            "red"
        } else {
            "orange"
        };
        fault_raised_and_resolved(&collector, stage, level).await;
        let arrived = collector.wait_until(WAIT, |a| smoke_raises(a) > i).await;
        assert!(
            arrived,
            "the smoke alarm raised while {stage} was down never arrived"
        );
        smoke
            .publish("sensors/b1-smoke/state", r#"{"smoke":false}"#)
            .await;
        let cleared = collector
            .wait_until(WAIT, |a| {
                a.iter()
                    .filter(|r| r.json["kind"] == "smoke" && r.json["event"] == "resolved")
                    .count()
                    > i
            })
            .await;
        assert!(cleared, "smoke never cleared after {stage}");
    }
    let status = site.status();
    for stage in alarm_path.iter().chain(&degraded) {
        let s = &status["stages"][stage];
        assert!(s["restarts"].as_u64() >= Some(1), "{stage}: {status:#}");
        assert!(
            s["last_error"].as_str().unwrap().contains("fault injected"),
            "{s}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wedged_alarm_path_is_reported_as_a_fault_within_the_self_test_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(tmp.path());
    let collector = Collector::start(&upstream, "platform-wedge").await;
    let mut site = Site::start("", &upstream.uplink_toml("gw.pass"));
    let smoke = site.smoke().await;
    site.status_until(WAIT, |s| !s["self_test"]["last_ok_at"].is_null())
        .await;
    for (round, stage) in ["ingest", "rules", "alerts"].into_iter().enumerate() {
        let wedge = site.inject(stage, "wedge");
        let wedged_at = Instant::now();
        // Bound: 3 s timeout + 1 s period + 1 s status refresh.
        let status = site
            .status_until(Duration::from_secs(8), |s| {
                !s["self_test"]["failing_since"].is_null()
                    && !s["stages"]["self_test"]["faulted_since"].is_null()
            })
            .await;
        assert!(wedged_at.elapsed() < Duration::from_secs(8));
        assert!(
            status["stages"]["self_test"]["last_error"]
                .as_str()
                .unwrap()
                .contains("alarm path not working"),
            "{status:#}"
        );
        let text = Command::new(e2e::bin("gateway"))
            .args(["status", "--data-dir"])
            .arg(&site.data)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.contains("self_test: FAULT (alarm path)"), "{text}");
        assert!(text.contains("self-test:   FAILING"), "{text}");
        // An alarm while the path is wedged: recorded and forwarded once it is free again.
        smoke
            .publish("sensors/b1-smoke/state", r#"{"smoke":true}"#)
            .await;
        std::fs::remove_file(&wedge).unwrap();
        fault_raised_and_resolved_times(&collector, "self_test", round + 1).await;
        let arrived = collector
            .wait_until(WAIT, |a| smoke_raises(a) > round)
            .await;
        assert!(
            arrived,
            "the alarm raised while {stage} was wedged never arrived"
        );
        smoke
            .publish("sensors/b1-smoke/state", r#"{"smoke":false}"#)
            .await;
        site.status_until(WAIT, |s| s["self_test"]["failing_since"].is_null())
            .await;
    }
    site.gateway.drain_log();
    assert!(
        site.gateway
            .seen
            .iter()
            .any(|l| l.contains("self-test: the alarm path is not working")),
        "the fault is logged"
    );
}

/// Waits until `n` red `gateway_fault` raises and resolves of `stage` reached the platform.
async fn fault_raised_and_resolved_times(collector: &Collector, stage: &str, n: usize) {
    let ok = collector
        .wait_until(Duration::from_secs(30), |a| {
            fault_events(a, stage, "resolved") >= n && fault_events(a, stage, "raised") >= n
        })
        .await;
    let alerts = collector.alerts();
    assert!(
        ok,
        "{n} raise/resolve of gateway_fault {stage} expected upstream; got {} / {}",
        fault_events(&alerts, stage, "raised"),
        fault_events(&alerts, stage, "resolved")
    );
    assert!(alerts
        .iter()
        .filter(|r| r.json["kind"] == "gateway_fault" && r.json["event"] == "raised")
        .all(|r| r.json["level"] == "red"));
}
