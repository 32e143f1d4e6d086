//! Hazard sensors → alerts, end to end: the real `gateway` binary with its embedded broker
//! on 127.0.0.1:0, sensors publishing real MQTT, a subscriber watching
//! `shouwang/test-site/alerts/#`, and the SQLite store read after the fact.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use e2e::mqtt::Mqtt;
use e2e::{write_config, Gateway};
use serde_json::Value;

const SITE: &str = r#"
[[locations.buildings]]
id = "b1"
name = "1号楼"
floors = 18
[[locations.buildings.units]]
id = "u1"
name = "1单元"
[[locations.buildings]]
id = "b2"
name = "2号楼"
floors = 18
[[locations.buildings.units]]
id = "u3"
name = "3单元"
[[locations.areas]]
id = "shed"
name = "充电棚"
kind = "charging_shed"

[rules.timing]
debounce_s = 0
clear_hold_s = 1
escalate_after_s = 10

[[devices]]
id = "b1-smoke"
kind = "smoke"
location = { building = "b1", unit = "u1", floor = 3, room = "301" }
[[devices]]
id = "b1-heat"
kind = "heat"
location = { building = "b1", unit = "u1", floor = 3 }
[[devices]]
id = "b2-u3-gas"
kind = "gas"
location = { building = "b2", unit = "u3", floor = 5, room = "501" }
[[devices]]
id = "b1-leak"
kind = "water_leak"
location = { building = "b1", unit = "u1", floor = 1 }
[[devices]]
id = "b1-sos"
kind = "sos"
location = { building = "b1", unit = "u1", floor = 1 }
[[devices]]
id = "shed-bat-1"
kind = "ebike_battery"
location = { area = "shed" }
[[devices]]
id = "z-smoke"
kind = "smoke"
format = "zigbee2mqtt"
friendly_name = "kitchen_smoke"
location = { building = "b2", unit = "u3", floor = 7 }
[[devices]]
id = "z-gas"
kind = "gas"
format = "zigbee2mqtt"
friendly_name = "kitchen_gas"
location = { building = "b2", unit = "u3", floor = 7 }
[[devices]]
id = "z-leak"
kind = "water_leak"
format = "zigbee2mqtt"
friendly_name = "bathroom_leak"
location = { building = "b2", unit = "u3", floor = 7 }
"#;

const WAIT: Duration = Duration::from_secs(10);

struct Site {
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    gateway: Gateway,
    broker: SocketAddr,
}

fn start(extra: &str) -> Site {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &format!("{SITE}\n{extra}"));
    let data = dir.path().join("data");
    let mut gateway = Gateway::start(&config, &data);
    let broker = gateway.wait_ready();
    Site {
        _dir: dir,
        data,
        gateway,
        broker,
    }
}

async fn watcher(broker: SocketAddr, id: &str) -> Mqtt {
    let w = Mqtt::connect(broker, id).await;
    w.subscribe("shouwang/test-site/alerts/#").await;
    w
}

fn is(kind: &'static str, event: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["kind"] == kind && v["event"] == event
}

fn stored_events(data: &Path, kind: &str) -> Vec<(String, String)> {
    let conn = rusqlite::Connection::open_with_flags(
        data.join("shouwang.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT e.event, json_extract(e.body, '$.level') FROM alert_events e
             JOIN alerts a ON a.id = e.alert_id WHERE a.kind = ?1 ORDER BY e.seq",
        )
        .unwrap();
    stmt.query_map([kind], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn smoke_alarm_raises_one_red_alert_at_its_location_and_clears_when_the_smoke_is_gone() {
    let site = start("");
    let mut w = watcher(site.broker, "w-smoke").await;
    let sensor = Mqtt::connect(site.broker, "b1-smoke").await;
    for _ in 0..3 {
        sensor
            .publish(
                "sensors/b1-smoke/state",
                r#"{"smoke":true,"battery_pct":90}"#,
            )
            .await;
    }
    let raised = w.collect(1, WAIT, is("smoke", "raised")).await;
    assert_eq!(raised.len(), 1, "one raised smoke alert");
    let a = &raised[0];
    assert_eq!(a["level"], "red");
    assert_eq!(a["source"]["id"], "b1-smoke");
    assert_eq!(a["location"]["building"], "b1");
    assert_eq!(a["location"]["room"], "301");
    assert!(a["message"]["zh-CN"].as_str().unwrap().contains("烟雾报警"));
    assert!(a["message"]["en"].as_str().unwrap().contains("Smoke alarm"));

    sensor
        .publish("sensors/b1-smoke/state", r#"{"smoke":false}"#)
        .await;
    let resolved = w.collect(1, WAIT, is("smoke", "resolved")).await;
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0]["id"], a["id"]);
    // Repeated readings updated nothing: raised then resolved, in the store too.
    let events = stored_events(&site.data, "smoke");
    let names: Vec<_> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(names, ["raised", "resolved"]);
    // Every accepted reading is durable as telemetry (4 readings from this sensor).
    let telemetry: i64 = rusqlite::Connection::open(site.data.join("shouwang.db"))
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM outbox WHERE stream = 1 AND json_extract(payload, '$.device') = 'b1-smoke'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(telemetry, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn gas_goes_orange_then_red_then_clears_and_hovering_does_not_spam() {
    let site = start("");
    let mut w = watcher(site.broker, "w-gas").await;
    let sensor = Mqtt::connect(site.broker, "b2-u3-gas").await;
    let gas = |lel: f64| format!(r#"{{"gas_lel_pct":{lel}}}"#);
    // Hover around the 10 %LEL low alarm threshold (hysteresis 2 %LEL).
    for lel in [10.5, 9.0, 10.8, 8.5, 10.2, 9.1, 11.0] {
        sensor.publish("sensors/b2-u3-gas/state", gas(lel)).await;
        // The scenario: readings spread out in time as a detector sends them, not one burst.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let orange = w.collect(1, WAIT, is("gas", "raised")).await;
    assert_eq!(orange.len(), 1);
    assert_eq!(orange[0]["level"], "orange");
    assert_eq!(orange[0]["location"]["building"], "b2");
    assert_eq!(orange[0]["location"]["unit"], "u3");
    sensor.publish("sensors/b2-u3-gas/state", gas(30.0)).await;
    let red = w
        .collect(1, WAIT, |v| v["kind"] == "gas" && v["level"] == "red")
        .await;
    assert_eq!(red.len(), 1);
    assert_eq!(red[0]["id"], orange[0]["id"], "same alert, updated");
    sensor.publish("sensors/b2-u3-gas/state", gas(2.0)).await;
    assert_eq!(w.collect(1, WAIT, is("gas", "resolved")).await.len(), 1);
    let events = stored_events(&site.data, "gas");
    assert_eq!(
        events,
        [
            ("raised".to_string(), "orange".to_string()),
            ("updated".to_string(), "red".to_string()),
            ("resolved".to_string(), "red".to_string())
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_hazard_kind_raises_its_alert_kind_and_level() {
    let site = start("");
    let mut w = watcher(site.broker, "w-kinds").await;
    let s = Mqtt::connect(site.broker, "kinds").await;
    s.publish("sensors/b1-heat/state", r#"{"temperature_c":61.0}"#)
        .await;
    s.publish("sensors/b1-leak/state", r#"{"water_leak":true}"#)
        .await;
    s.publish("sensors/b1-sos/state", r#"{"pressed":true}"#)
        .await;
    s.publish(
        "sensors/shed-bat-1/state",
        r#"{"battery_temp_c":66.0,"voltage_v":53.1,"current_a":4.2,"charging":true,"present":true}"#,
    )
    .await;
    let raised = w.collect(4, WAIT, |v| v["event"] == "raised").await;
    let mut got: Vec<(String, String)> = raised
        .iter()
        .map(|v| {
            (
                v["kind"].as_str().unwrap().to_owned(),
                v["level"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("ebike_battery".to_string(), "orange".to_string()),
            ("heat".to_string(), "red".to_string()),
            ("sos".to_string(), "red".to_string()),
            ("water_leak".to_string(), "orange".to_string()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn zigbee2mqtt_smoke_gas_and_leak_messages_raise_the_same_alerts() {
    let site = start("");
    let mut w = watcher(site.broker, "w-z2m").await;
    let z = Mqtt::connect(site.broker, "zigbee2mqtt-bridge").await;
    z.publish(
        "zigbee2mqtt/kitchen_smoke",
        r#"{"smoke":true,"battery":97,"linkquality":80}"#,
    )
    .await;
    z.publish(
        "zigbee2mqtt/kitchen_gas",
        r#"{"gas":true,"linkquality":60}"#,
    )
    .await;
    z.publish(
        "zigbee2mqtt/bathroom_leak",
        r#"{"battery":100,"battery_low":false,"tamper":false,"voltage":3015,"water_leak":true,"linkquality":73}"#,
    )
    .await;
    let raised = w.collect(3, WAIT, |v| v["event"] == "raised").await;
    let mut got: Vec<(String, String, String)> = raised
        .iter()
        .map(|v| {
            (
                v["kind"].as_str().unwrap().to_owned(),
                v["level"].as_str().unwrap().to_owned(),
                v["source"]["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("gas".into(), "red".into(), "z-gas".into()),
            ("smoke".into(), "red".into(), "z-smoke".into()),
            ("water_leak".into(), "orange".into(), "z-leak".into()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_silent_for_its_heartbeats_goes_offline_and_resolves_when_it_returns() {
    let site = start(
        r#"
[rules.device]
offline_after_heartbeats = 1

[[devices]]
id = "quiet-smoke"
kind = "smoke"
heartbeat_s = 10
location = { building = "b1" }
"#,
    );
    let mut w = watcher(site.broker, "w-offline").await;
    let offline = w
        .collect(1, Duration::from_secs(20), |v| {
            v["kind"] == "device_offline"
                && v["event"] == "raised"
                && v["source"]["id"] == "quiet-smoke"
        })
        .await;
    assert_eq!(
        offline.len(),
        1,
        "quiet-smoke offline after one missed 10 s heartbeat"
    );
    assert_eq!(offline[0]["level"], "yellow");
    let s = Mqtt::connect(site.broker, "quiet-smoke").await;
    s.publish("sensors/quiet-smoke/heartbeat", "").await;
    let back = w
        .collect(1, WAIT, |v| {
            v["kind"] == "device_offline"
                && v["event"] == "resolved"
                && v["source"]["id"] == "quiet-smoke"
        })
        .await;
    assert_eq!(back.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_messages_are_counted_and_rejected_while_a_real_smoke_alarm_still_arrives() {
    let mut site = start("");
    let mut w = watcher(site.broker, "w-bad").await;
    let bad = Mqtt::connect(site.broker, "vandal").await;
    let good = Mqtt::connect(site.broker, "b1-smoke").await;
    let oversized = format!(r#"{{"smoke":true,"pad":"{}"}}"#, "x".repeat(20 * 1024));
    let flood = async {
        for i in 0..200 {
            match i % 4 {
                0 => bad.publish("sensors/b2-u3-gas/state", "{not json").await,
                1 => {
                    bad.publish("sensors/b1-heat/state", r#"{"temperature_c":"hot"}"#)
                        .await
                }
                2 => {
                    bad.publish("sensors/b1-leak/state", oversized.clone())
                        .await
                }
                _ => {
                    bad.publish("sensors/nobody/state", r#"{"smoke":true}"#)
                        .await
                }
            }
        }
    };
    let alarm = async {
        // The scenario: the alarm goes out once the flood is under way, not before it.
        tokio::time::sleep(Duration::from_millis(20)).await;
        good.publish("sensors/b1-smoke/state", r#"{"smoke":true}"#)
            .await;
    };
    tokio::join!(flood, alarm);
    let raised = w.collect(1, WAIT, is("smoke", "raised")).await;
    assert_eq!(raised.len(), 1, "the concurrent smoke alarm arrives");
    let others = w.drain(Duration::from_secs(2)).await;
    assert!(
        others.iter().all(|m| m.json()["kind"] == "smoke"),
        "malformed input raised nothing: {:?}",
        others.iter().map(|m| m.json()).collect::<Vec<_>>()
    );
    site.gateway.drain_log();
    let reasons: Vec<String> = site
        .gateway
        .seen
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "sensor message rejected")
        .map(|v| v["reason"].as_str().unwrap_or("").to_owned())
        .collect();
    for reason in ["invalid_json", "wrong_type", "oversized", "unknown_device"] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "no {reason} rejection logged: {reasons:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn active_alerts_survive_a_restart_are_republished_and_still_escalate() {
    let mut site = start("");
    let raised = {
        let mut w = watcher(site.broker, "w-restart-1").await;
        let s = Mqtt::connect(site.broker, "b1-sos").await;
        s.publish("sensors/b1-sos/state", r#"{"pressed":true}"#)
            .await;
        w.collect(1, WAIT, is("sos", "raised")).await
    };
    assert_eq!(raised.len(), 1);
    let id = raised[0]["id"].clone();
    site.gateway.signal(libc::SIGTERM);
    assert!(site
        .gateway
        .wait_exit(Duration::from_secs(5))
        .unwrap()
        .success());

    let config = site.data.parent().unwrap().join("gateway.toml");
    let mut again = Gateway::start(&config, &site.data);
    let broker = again.wait_ready();
    let mut w = watcher(broker, "w-restart-2").await;
    // The retained, republished alert is there for a subscriber that arrives after the restart.
    let republished = w.collect(1, WAIT, |v| v["kind"] == "sos").await;
    assert_eq!(republished.len(), 1);
    assert_eq!(republished[0]["id"], id);
    // Escalation (10 s after raising, unacknowledged) still fires after the restart.
    let escalated = w
        .collect(1, Duration::from_secs(15), is("sos", "escalated"))
        .await;
    assert_eq!(escalated.len(), 1);
    assert_eq!(escalated[0]["id"], id);
    assert_eq!(escalated[0]["state"], "escalated");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gas_alarm_closes_the_valve_and_the_confirmation_or_its_absence_is_recorded() {
    let site = start(
        r#"
[[devices]]
id = "b2-u3-valve"
kind = "valve"
location = { building = "b2", unit = "u3", floor = 5 }
[[devices]]
id = "b2-siren"
kind = "siren"
location = { building = "b2" }
[[rules.linkage]]
on = "gas"
min_level = "orange"
action = "close_valve"
targets = ["b2-u3-valve"]
[[rules.linkage]]
on = "gas"
min_level = "red"
action = "sound_siren"
targets = ["b2-siren"]
"#,
    );
    // rules.timing.actuator_confirm_s is left at its default (10 s) for the siren.
    let mut w = watcher(site.broker, "w-linkage").await;
    let mut valve = Mqtt::connect(site.broker, "b2-u3-valve").await;
    valve.subscribe("sensors/b2-u3-valve/set").await;
    let sensor = Mqtt::connect(site.broker, "b2-u3-gas").await;
    sensor
        .publish("sensors/b2-u3-gas/state", r#"{"gas_lel_pct":30}"#)
        .await;

    let raised = w.collect(1, WAIT, is("gas", "raised")).await;
    assert_eq!(raised.len(), 1);
    let actions = raised[0]["actions"].as_array().unwrap();
    assert_eq!(
        actions.len(),
        2,
        "valve and siren actions recorded pending: {actions:?}"
    );
    assert!(actions.iter().all(|a| a["outcome"] == "pending"));

    let command = valve.next(WAIT).await.expect("valve receives a command");
    assert_eq!(command.json()["command"], "close");
    assert_eq!(command.json()["alert_id"], raised[0]["id"]);
    valve
        .publish("sensors/b2-u3-valve/state", r#"{"state":"closed"}"#)
        .await;

    let confirmed = w
        .collect(1, WAIT, |v| {
            v["kind"] == "gas"
                && v["actions"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|x| x["target"] == "b2-u3-valve" && x["outcome"] == "confirmed")
                })
        })
        .await;
    assert_eq!(
        confirmed.len(),
        1,
        "valve confirmation recorded on the alert"
    );
    let timed_out = w
        .collect(1, Duration::from_secs(15), |v| {
            v["kind"] == "gas"
                && v["actions"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|x| x["target"] == "b2-siren" && x["outcome"] == "timed_out")
                })
        })
        .await;
    assert_eq!(
        timed_out.len(),
        1,
        "the silent siren is recorded as timed out"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_site_with_three_thousand_devices_hears_the_last_one() {
    let mut devices = String::new();
    for i in 0..3000 {
        devices.push_str(&format!(
            "[[devices]]\nid = \"many-{i}\"\nkind = \"smoke\"\nlocation = {{ building = \"b1\" }}\n"
        ));
    }
    let site = start(&devices);
    let mut w = watcher(site.broker, "w-many").await;
    // No waiting for the gateway's subscriptions: the embedded broker subscribes ingest to
    // every device topic before its listener opens, so the first publish already has a reader.
    let s = Mqtt::connect(site.broker, "many-2999").await;
    s.publish("sensors/many-2999/state", r#"{"smoke":true}"#)
        .await;
    let raised = w
        .collect(1, WAIT, |v| v["source"]["id"] == "many-2999")
        .await;
    assert_eq!(raised.len(), 1);
}

/// One hazard per kind: the reading that raises it, a reading hovering around the
/// threshold, and the reading that recovers.
struct Case {
    device: &'static str,
    kind: &'static str,
    level: &'static str,
    building: &'static str,
    raise: &'static str,
    hover: &'static [&'static str],
    recover: &'static str,
}

const CASES: &[Case] = &[
    Case {
        device: "b1-smoke",
        kind: "smoke",
        level: "red",
        building: "b1",
        raise: r#"{"smoke":true}"#,
        hover: &[r#"{"smoke":true}"#, r#"{"smoke":true,"battery_pct":80}"#],
        recover: r#"{"smoke":false}"#,
    },
    Case {
        device: "b1-heat",
        kind: "heat",
        level: "red",
        building: "b1",
        raise: r#"{"temperature_c":58.0}"#,
        // Fixed 57 °C with 3 °C hysteresis: 55–58 stays one alert.
        hover: &[
            r#"{"temperature_c":56.0}"#,
            r#"{"temperature_c":57.5}"#,
            r#"{"temperature_c":55.0}"#,
        ],
        recover: r#"{"temperature_c":30.0}"#,
    },
    Case {
        device: "b2-u3-gas",
        kind: "gas",
        level: "orange",
        building: "b2",
        raise: r#"{"gas_lel_pct":11.0}"#,
        hover: &[
            r#"{"gas_lel_pct":9.0}"#,
            r#"{"gas_lel_pct":10.5}"#,
            r#"{"gas_lel_pct":8.5}"#,
        ],
        recover: r#"{"gas_lel_pct":1.0}"#,
    },
    Case {
        device: "b1-leak",
        kind: "water_leak",
        level: "orange",
        building: "b1",
        raise: r#"{"water_leak":true}"#,
        hover: &[r#"{"water_leak":true}"#, r#"{"water_leak":true}"#],
        recover: r#"{"water_leak":false}"#,
    },
    Case {
        device: "shed-bat-1",
        kind: "ebike_battery",
        level: "orange",
        building: "",
        raise: r#"{"battery_temp_c":61.0,"charging":true,"present":true}"#,
        hover: &[
            r#"{"battery_temp_c":59.5,"charging":true}"#,
            r#"{"battery_temp_c":60.5,"charging":true}"#,
        ],
        recover: r#"{"battery_temp_c":35.0,"charging":false}"#,
    },
];

#[tokio::test(flavor = "multi_thread")]
async fn each_kind_raises_once_at_its_location_in_store_and_topic_hovering_does_not_spam_recovery_resolves(
) {
    let site = start("");
    let mut w = watcher(site.broker, "w-per-kind").await;
    let s = Mqtt::connect(site.broker, "per-kind").await;
    for case in CASES {
        let topic = format!("sensors/{}/state", case.device);
        s.publish(&topic, case.raise).await;
        for h in case.hover {
            s.publish(&topic, *h).await;
            // The scenario: readings spread out in time as a sensor sends them, not one burst.
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let raised = w.collect(1, WAIT, is(case.kind, "raised")).await;
        assert_eq!(raised.len(), 1, "{}: one raised alert", case.kind);
        let a = &raised[0];
        assert_eq!(a["level"], case.level, "{}", case.kind);
        assert_eq!(a["source"]["id"], case.device);
        if case.building.is_empty() {
            assert_eq!(a["location"]["area"], "shed");
        } else {
            assert_eq!(a["location"]["building"], case.building);
        }
        s.publish(&topic, case.recover).await;
        // Everything until the resolution belongs to this one alert and is not a new raise.
        let mut seen = Vec::new();
        while let Some(m) = w.next(WAIT).await {
            let v = m.json();
            if v.is_null() || v["kind"] != case.kind {
                continue;
            }
            seen.push(v["event"].as_str().unwrap_or("").to_owned());
            if v["event"] == "resolved" {
                assert_eq!(v["id"], a["id"]);
                break;
            }
        }
        assert_eq!(
            seen.last().map(String::as_str),
            Some("resolved"),
            "{}: {seen:?}",
            case.kind
        );
        assert!(
            !seen.iter().any(|e| e == "raised"),
            "{}: hovering raised again: {seen:?}",
            case.kind
        );
        let stored = stored_events(&site.data, case.kind);
        assert_eq!(
            stored.first().map(|(e, _)| e.as_str()),
            Some("raised"),
            "{}",
            case.kind
        );
        assert_eq!(
            stored.last().map(|(e, _)| e.as_str()),
            Some("resolved"),
            "{}",
            case.kind
        );
        assert_eq!(
            stored.iter().filter(|(e, _)| e == "raised").count(),
            1,
            "{}: {stored:?}",
            case.kind
        );
    }
}
