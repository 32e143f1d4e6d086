//! Reload without a restart, end to end: the real `gateway` binary, its embedded broker on
//! 127.0.0.1:0, sensors publishing real MQTT, and `gateway reload --data-dir` (SIGHUP to the
//! pid in status.json, outcome from reload.json). Each test checks that the process was not
//! restarted (same pid, sensors never reconnected).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e::mqtt::Mqtt;
use e2e::{bin, write_config, Gateway};
use serde_json::Value;

const SITE: &str = r#"
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

[[devices]]
id = "b1-smoke"
kind = "smoke"
location = { building = "b1", unit = "u1", floor = 3, room = "301" }
"#;

const GAS: &str = r#"
[[devices]]
id = "b1-gas"
kind = "gas"
location = { building = "b1", unit = "u1", floor = 5, room = "501" }
"#;

const WAIT: Duration = Duration::from_secs(10);

struct Site {
    dir: tempfile::TempDir,
    data: PathBuf,
    gateway: Gateway,
    broker: std::net::SocketAddr,
}

impl Site {
    fn start(body: &str) -> Site {
        let dir = tempfile::tempdir().unwrap();
        write_config(dir.path(), body);
        let data = dir.path().join("data");
        let mut gateway = Gateway::start(&dir.path().join("gateway.toml"), &data);
        let broker = gateway.wait_ready();
        // `gateway reload` finds the pid in status.json, written every second.
        let status = data.join("status.json");
        let deadline = std::time::Instant::now() + WAIT;
        while !status.exists() {
            assert!(std::time::Instant::now() < deadline, "no status.json");
            std::thread::sleep(Duration::from_millis(50));
        }
        Site {
            dir,
            data,
            gateway,
            broker,
        }
    }

    /// Rewrites the configuration file (same listeners) with `body`.
    fn rewrite(&self, body: &str) {
        write_config(self.dir.path(), body);
    }

    /// Runs `gateway reload --data-dir DATA --json`: exit code and the outcome.
    fn reload(&self) -> (i32, Value) {
        reload(&self.data)
    }
}

fn reload(data: &Path) -> (i32, Value) {
    let out = Command::new(bin("gateway"))
        .args(["reload", "--json", "--data-dir"])
        .arg(data)
        .output()
        .expect("run gateway reload");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let outcome = serde_json::from_str(&stdout).unwrap_or_else(|_| {
        panic!(
            "gateway reload printed no outcome: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), outcome)
}

async fn watcher(broker: std::net::SocketAddr, id: &str) -> Mqtt {
    let w = Mqtt::connect(broker, id).await;
    w.subscribe("shouwang/test-site/alerts/#").await;
    w
}

fn is(kind: &'static str, event: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["kind"] == kind && v["event"] == event
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_added_by_reload_alarms_and_the_running_smoke_alert_carries_on_untouched() {
    let site = Site::start(SITE);
    let pid = site.gateway.pid();
    let mut w = watcher(site.broker, "w-add").await;
    let mut smoke = Mqtt::connect(site.broker, "b1-smoke").await;
    let gas = Mqtt::connect(site.broker, "b1-gas").await;
    smoke
        .publish("sensors/b1-smoke/state", r#"{"smoke":true}"#)
        .await;
    let raised = w.collect(1, WAIT, is("smoke", "raised")).await;
    assert_eq!(raised.len(), 1, "smoke alarm before the reload");
    // Not configured yet: the gas sensor's alarm is an unknown device's message.
    gas.publish("sensors/b1-gas/state", r#"{"gas_lel_pct":30}"#)
        .await;
    assert!(w
        .collect(1, Duration::from_secs(1), is("gas", "raised"))
        .await
        .is_empty());

    site.rewrite(&format!("{SITE}\n{GAS}"));
    let (code, outcome) = site.reload();
    assert_eq!(code, 0, "{outcome}");
    assert_eq!(outcome["result"], "applied");
    assert_eq!(strings(&outcome["applied"]), ["device b1-gas added"]);
    assert_eq!(outcome["pid"], pid, "the same process reloaded");

    gas.publish("sensors/b1-gas/state", r#"{"gas_lel_pct":30}"#)
        .await;
    let red = w.collect(1, WAIT, is("gas", "raised")).await;
    assert_eq!(red.len(), 1, "the new device alarms without a restart");
    assert_eq!(red[0]["level"], "red");
    assert_eq!(red[0]["location"]["room"], "501");

    // The smoke detector's state crossed the reload: its alert is still the same one, and
    // the all-clear resolves exactly it.
    smoke
        .publish("sensors/b1-smoke/state", r#"{"smoke":false}"#)
        .await;
    let resolved = w.collect(1, WAIT, is("smoke", "resolved")).await;
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0]["id"], raised[0]["id"]);
    assert!(
        !smoke.reconnected(),
        "the unchanged device's connection was kept"
    );
    assert_eq!(site.gateway.pid(), pid);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lowered_gas_threshold_takes_effect_on_the_next_reading() {
    let site = Site::start(&format!("{SITE}\n{GAS}"));
    let mut w = watcher(site.broker, "w-threshold").await;
    let gas = Mqtt::connect(site.broker, "b1-gas").await;
    gas.publish("sensors/b1-gas/state", r#"{"gas_lel_pct":7}"#)
        .await;
    assert!(
        w.collect(1, Duration::from_secs(1), is("gas", "raised"))
            .await
            .is_empty(),
        "7 %LEL is below the default 10 %LEL alarm"
    );
    site.rewrite(&format!(
        "{SITE}\n{GAS}\n[rules.gas]\nlow_lel_pct = 5.0\nhigh_lel_pct = 25.0\n"
    ));
    let (code, outcome) = site.reload();
    assert_eq!(code, 0, "{outcome}");
    assert_eq!(
        strings(&outcome["applied"]),
        ["rules (thresholds, timing, linkage) changed"]
    );
    gas.publish("sensors/b1-gas/state", r#"{"gas_lel_pct":7.5}"#)
        .await;
    let raised = w.collect(1, WAIT, is("gas", "raised")).await;
    assert_eq!(raised.len(), 1, "the new threshold applies");
    assert_eq!(raised[0]["level"], "orange");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_file_is_refused_with_every_error_and_the_running_config_still_alarms() {
    let site = Site::start(SITE);
    let mut w = watcher(site.broker, "w-broken").await;
    let smoke = Mqtt::connect(site.broker, "b1-smoke").await;
    // Two mistakes: an unknown key and a device kind that does not exist.
    site.rewrite(&format!(
        "{SITE}\n[[devices]]\nid = \"b1-x\"\nkind = \"smokey\"\nlocation = {{ building = \"b1\" }}\n\n[rules.gas]\nlow_lel = 5.0\n"
    ));
    let (code, outcome) = site.reload();
    assert_eq!(code, 78, "EX_CONFIG: {outcome}");
    assert_eq!(outcome["result"], "refused");
    let errors = strings(&outcome["errors"]);
    assert!(errors.len() >= 2, "every error, not the first: {errors:?}");
    assert!(
        errors.iter().any(|e| e.contains("smokey")) && errors.iter().any(|e| e.contains("low_lel")),
        "{errors:?}"
    );
    for e in &errors {
        let at: Vec<&str> = e.splitn(4, ':').collect();
        assert!(
            at.len() == 4 && at[1].parse::<u32>().is_ok() && at[2].parse::<u32>().is_ok(),
            "file:line:col: {e}"
        );
    }
    // The running configuration still alarms.
    smoke
        .publish("sensors/b1-smoke/state", r#"{"smoke":true}"#)
        .await;
    assert_eq!(w.collect(1, WAIT, is("smoke", "raised")).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_devices_alert_is_resolved_with_the_reason_and_restart_only_keys_are_named() {
    let site = Site::start(&format!("{SITE}\n{GAS}"));
    let mut w = watcher(site.broker, "w-remove").await;
    let gas = Mqtt::connect(site.broker, "b1-gas").await;
    gas.publish("sensors/b1-gas/state", r#"{"gas_lel_pct":30}"#)
        .await;
    let raised = w.collect(1, WAIT, is("gas", "raised")).await;
    assert_eq!(raised.len(), 1);
    // The gas detector leaves; the site is renamed (a restart-only key).
    site.rewrite(
        &SITE
            .replace("name = \"1号楼\"", "name = \"一号楼\"")
            .to_owned(),
    );
    let text = std::fs::read_to_string(site.dir.path().join("gateway.toml")).unwrap();
    std::fs::write(
        site.dir.path().join("gateway.toml"),
        text.replace("name = \"Test compound\"", "name = \"Renamed compound\""),
    )
    .unwrap();
    let (code, outcome) = site.reload();
    assert_eq!(code, 0, "{outcome}");
    assert_eq!(
        strings(&outcome["applied"]),
        ["device b1-gas removed", "locations changed"]
    );
    assert_eq!(strings(&outcome["restart_needed"]), ["site.name"]);
    let resolved = w.collect(1, WAIT, is("gas", "resolved")).await;
    assert_eq!(resolved.len(), 1, "the removed device's alert is resolved");
    assert_eq!(resolved[0]["id"], raised[0]["id"]);
    assert_eq!(
        resolved[0]["resolved_by"],
        "config reload: no longer configured"
    );
    // Its later messages raise nothing.
    gas.publish("sensors/b1-gas/state", r#"{"gas_lel_pct":40}"#)
        .await;
    assert!(w
        .collect(1, Duration::from_secs(1), is("gas", "raised"))
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_alarm_sent_while_reloads_repeat_under_a_flood_is_never_lost() {
    let site = Site::start(&format!("{SITE}\n{GAS}"));
    let mut w = watcher(site.broker, "w-flood").await;
    let smoke = Mqtt::connect(site.broker, "b1-smoke").await;
    let flooder = Mqtt::connect(site.broker, "b1-gas").await;
    let flood = tokio::spawn(async move {
        for i in 0..3000u32 {
            let lel = f64::from(i % 5);
            flooder
                .publish(
                    "sensors/b1-gas/state",
                    format!(r#"{{"gas_lel_pct":{lel}}}"#),
                )
                .await;
        }
        flooder
    });
    // Reloads back and forth (a threshold toggles) while the flood runs, and the smoke
    // alarm lands between two of them.
    let data = site.data.clone();
    for round in 0..4 {
        let low = if round % 2 == 0 { 6.0 } else { 10.0 };
        site.rewrite(&format!(
            "{SITE}\n{GAS}\n[rules.gas]\nlow_lel_pct = {low}\nhigh_lel_pct = 25.0\n"
        ));
        let (code, outcome) = tokio::task::spawn_blocking({
            let data = data.clone();
            move || reload(&data)
        })
        .await
        .unwrap();
        assert_eq!(code, 0, "{outcome}");
        if round == 1 {
            smoke
                .publish("sensors/b1-smoke/state", r#"{"smoke":true}"#)
                .await;
        }
    }
    let raised = w.collect(1, WAIT, is("smoke", "raised")).await;
    assert_eq!(raised.len(), 1, "the alarm crossed the reloads");
    let _flooder = flood.await.unwrap();
}

/// The cameras' counters in status.json (written every second).
fn camera_counters(data: &Path) -> std::collections::BTreeMap<String, (u64, u64)> {
    let text = std::fs::read_to_string(data.join("status.json")).unwrap_or_default();
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    v["cameras"]
        .as_object()
        .map(|cams| {
            cams.iter()
                .map(|(id, c)| {
                    let n = |k: &str| c[k].as_u64().unwrap_or(0);
                    (id.clone(), (n("decoded"), n("reconnects")))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Polls status.json until `done` holds, checking `each` on every sample.
fn watch_cameras(
    data: &Path,
    what: &str,
    mut each: impl FnMut(&std::collections::BTreeMap<String, (u64, u64)>),
    done: impl Fn(&std::collections::BTreeMap<String, (u64, u64)>) -> bool,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let c = camera_counters(data);
        each(&c);
        if done(&c) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {c:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn camera(id: &str, port: u16, fps: u32) -> String {
    format!(
        r#"
[[cameras]]
id = "{id}"
url = "rtsp://127.0.0.1:{port}/cam0"
location = {{ area = "square" }}
analyse_fps = {fps}
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_camera_restarts_alone_and_a_removed_one_stops() {
    let free = || simulators::process::free_port().expect("a free loopback port");
    let (pa, pb) = (free(), free());
    let _sims = (e2e::sim::start_camera(pa), e2e::sim::start_camera(pb));
    // The duty officer (password "shouwang-demo"): the console's cameras panel is checked too.
    let area = "[[locations.areas]]\nid = \"square\"\nname = \"广场\"\nkind = \"other\"\n\n[[console.staff]]\nusername = \"duty\"\ndisplay_name = \"Duty\"\npassword_hash = \"$argon2id$v=19$m=19456,t=2,p=1$c2hvdXdhbmctZGVtby1zYQ$pMAMAJaZaTelU1nfxz3/8UfuGG6UrIxQfDFnKLoYXNk\"\nrole = \"admin\"\n";
    let body = |a_fps| {
        format!(
            "{area}{}{}",
            camera("cam-a", pa, a_fps),
            camera("cam-b", pb, 2)
        )
    };
    let mut site = Site::start(&body(2));
    let data = site.data.clone();
    watch_cameras(
        &data,
        "both cameras decode",
        |_| {},
        |c| c.get("cam-a").is_some_and(|a| a.0 > 15) && c.get("cam-b").is_some_and(|b| b.0 > 15),
    );
    let before = camera_counters(&data);
    let (a_before, b_before) = (before["cam-a"].0, before["cam-b"].0);

    site.rewrite(&body(3));
    let (code, outcome) = site.reload();
    assert_eq!(code, 0, "{outcome}");
    assert_eq!(strings(&outcome["applied"]), ["camera cam-a changed"]);
    // cam-a runs again from fresh counters; cam-b's never go back (its pipeline was kept).
    let b_last = std::cell::Cell::new(0);
    // cam-a's new pipeline counts from 0 (its old counter only grew).
    let (a_last, a_reset) = (std::cell::Cell::new(a_before), std::cell::Cell::new(false));
    watch_cameras(
        &data,
        "cam-a restarted, cam-b kept",
        |c| {
            let (b, b_reconnects) = c["cam-b"];
            let last = b_last.get();
            assert!(b >= last, "cam-b's pipeline restarted: {b} after {last}");
            assert_eq!(b_reconnects, 0, "cam-b reconnected");
            b_last.set(b);
            let a = c.get("cam-a").map_or(0, |a| a.0);
            a_reset.set(a_reset.get() || a < a_last.get());
            a_last.set(a);
        },
        |c| a_reset.get() && c.get("cam-a").is_some_and(|a| a.0 > 0) && c["cam-b"].0 > b_before,
    );
    let stopped = site
        .gateway
        .wait_for_message("camera stopped by a reload", WAIT);
    assert_eq!(stopped["camera"], "cam-a");

    // Removed: cam-b stops and leaves the status; cam-a keeps counting.
    site.rewrite(&format!("{area}{}", camera("cam-a", pa, 3)));
    let (code, outcome) = site.reload();
    assert_eq!(code, 0, "{outcome}");
    assert_eq!(strings(&outcome["applied"]), ["camera cam-b removed"]);
    let stopped = site
        .gateway
        .wait_for_message("camera stopped by a reload", WAIT);
    assert_eq!(stopped["camera"], "cam-b");
    let a_now = camera_counters(&data)["cam-a"].0;
    watch_cameras(
        &data,
        "cam-b gone, cam-a on",
        |_| {},
        |c| !c.contains_key("cam-b") && c.get("cam-a").is_some_and(|a| a.0 > a_now),
    );
    // The console follows: only cam-a, running, with its new pipeline's counters.
    let console = site
        .gateway
        .seen
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "gateway ready")
        .and_then(|v| v["console"].as_str().map(str::to_owned))
        .expect("the readiness line names the console");
    let body = serde_json::json!({ "username": "duty", "password": "shouwang-demo" }).to_string();
    let login = e2e::http::request(
        &console,
        "POST",
        "/login",
        &["Content-Type: application/json"],
        &body,
    );
    let cookie = format!(
        "Cookie: {}",
        login
            .header("set-cookie")
            .unwrap()
            .split(';')
            .next()
            .unwrap()
    );
    let panel: Value = serde_json::from_str(
        e2e::http::request(&console, "GET", "/api/cameras", &[&cookie], "").body(),
    )
    .unwrap();
    let listed: Vec<(&str, &str)> = panel["cameras"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["id"].as_str().unwrap(), c["status"].as_str().unwrap()))
        .collect();
    assert_eq!(listed, [("cam-a", "running")], "{panel}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_building_a_display_login_and_a_detector_added_by_reload_get_resident_notices() {
    let site = Site::start(SITE);
    let b9 = r#"
[[locations.buildings]]
id = "b9"
name = "9号楼"
floors = 6
[[locations.buildings.units]]
id = "u1"
name = "1单元"

[[broker.readers]]
username = "b9-display"
password = "display-secret"
topics = ["residents/b9/#"]

[[devices]]
id = "b9-gas"
kind = "gas"
location = { building = "b9", unit = "u1", floor = 2, room = "201" }
"#;
    site.rewrite(&format!("{SITE}\n{b9}"));
    let (code, outcome) = site.reload();
    assert_eq!(code, 0, "{outcome}");
    assert_eq!(
        strings(&outcome["applied"]),
        [
            "device b9-gas added",
            "locations changed",
            "broker readers changed"
        ]
    );
    // The new login works at once, and its grant is the new building's notices.
    let mut options = rumqttc::MqttOptions::new("b9-lobby", "127.0.0.1", site.broker.port());
    options.set_credentials("b9-display", "display-secret");
    let mut display = Mqtt::connect_with(options).await;
    display.subscribe("residents/b9/u1/alerts").await;
    let gas = Mqtt::connect(site.broker, "b9-gas").await;
    gas.publish("sensors/b9-gas/state", r#"{"gas_lel_pct":30}"#)
        .await;
    let notice = display.collect(1, WAIT, |v| !v.is_null()).await;
    assert_eq!(notice.len(), 1, "a notice for the new building's unit");
    assert_eq!(notice[0]["kind"], "gas");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_stage_that_crashes_is_a_fault_restarted_and_the_next_reload_works() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), SITE);
    let (data, faults) = (dir.path().join("data"), dir.path().join("faults"));
    std::fs::create_dir_all(&faults).unwrap();
    let mut command = Command::new(bin("gateway"));
    command
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .env(gateway::supervise::FAULT_INJECTION_ENV, &faults);
    let mut gateway = Gateway::spawn(command);
    gateway.wait_ready();
    e2e::eventually(WAIT, "status.json", || {
        data.join("status.json")
            .exists()
            .then_some(())
            .ok_or_else(|| "no status yet".to_owned())
    })
    .await;
    // The next reload panics inside the stage: no outcome, the stage is a fault.
    std::fs::write(faults.join("reload.panic"), "").unwrap();
    let out = Command::new(bin("gateway"))
        .args(["reload", "--timeout-s", "2", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "no answer from a crashed stage");
    let failed = gateway.wait_for_message("gateway stage failed; restarting it", WAIT);
    assert_eq!(failed["stage"], "reload");
    // Restarted with its state: the next reload applies.
    write_config(dir.path(), &format!("{SITE}\n{GAS}"));
    let (code, outcome) = e2e::eventually(WAIT, "a reload after the restart", || {
        let (code, outcome) = reload(&data);
        (outcome["result"] == "applied")
            .then(|| (code, outcome.clone()))
            .ok_or(outcome.to_string())
    })
    .await;
    assert_eq!(code, 0);
    assert_eq!(strings(&outcome["applied"]), ["device b1-gas added"]);
}
