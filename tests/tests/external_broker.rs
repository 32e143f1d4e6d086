//! `broker.mode = "external"`: the gateway runs no broker of its own and reads the sensors
//! from an existing one (Debian's mosquitto, with passwords) as an MQTT client. Alerts go to
//! that broker too, and a broker restart does not leave the gateway deaf.

use std::time::Duration;

use e2e::mqtt::Mqtt;
use e2e::upstream::{Upstream, OBSERVER, USER};
use e2e::Gateway;
use rumqttc::MqttOptions;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);

fn config(upstream: &Upstream) -> String {
    format!(
        r#"[site]
id = "test-site"
name = "Test compound"
kind = "compound"

[broker]
mode = "external"
[broker.external]
host = "127.0.0.1"
port = {port}
username = "{USER}"
password_file = "{pass}"

[console]
bind = "127.0.0.1:0"

[[locations.buildings]]
id = "b1"
name = "1号楼"
floors = 18

[rules.timing]
debounce_s = 0
clear_hold_s = 1

[[devices]]
id = "b1-smoke"
kind = "smoke"
location = {{ building = "b1", floor = 3 }}
[[devices]]
id = "z-gas"
kind = "gas"
format = "zigbee2mqtt"
friendly_name = "kitchen_gas"
location = {{ building = "b1", floor = 7 }}
"#,
        port = upstream.plain_port,
        pass = upstream.dir.join("gw.pass").display(),
    )
}

async fn client(upstream: &Upstream, id: &str) -> Mqtt {
    let mut o = MqttOptions::new(id, "127.0.0.1", upstream.plain_port);
    o.set_credentials(OBSERVER.0, OBSERVER.1);
    Mqtt::connect_with(o).await
}

/// Waits until the log has shown `message` `n` times in all (lines already read count: the
/// ingest may connect before or after the readiness line).
fn wait_for_nth(gateway: &mut Gateway, message: &str, n: usize) {
    let count = |g: &Gateway| {
        g.seen
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == message)
            .count()
    };
    gateway.drain_log();
    while count(gateway) < n {
        gateway.wait_for_message(message, Duration::from_secs(30));
    }
}

fn raised(kind: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["kind"] == kind && v["event"] == "raised"
}

#[tokio::test(flavor = "multi_thread")]
async fn sensors_on_an_external_mosquitto_raise_alerts_there_even_after_it_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut upstream = Upstream::start(dir.path());
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config(&upstream)).unwrap();
    let mut gateway = Gateway::start(&path, &dir.path().join("data"));
    let ready = gateway.wait_for_message("gateway ready", Duration::from_secs(30));
    assert_eq!(ready["broker"], "external", "no embedded broker: {ready}");
    wait_for_nth(&mut gateway, "ingest subscribed", 1);

    let mut watch = client(&upstream, "w-external").await;
    watch.subscribe("shouwang/test-site/alerts/#").await;
    let sensors = client(&upstream, "sensors").await;
    sensors
        .publish("sensors/b1-smoke/state", r#"{"smoke":true}"#)
        .await;
    sensors
        .publish("zigbee2mqtt/kitchen_gas", r#"{"gas":true}"#)
        .await;
    let smoke = watch.collect(1, WAIT, raised("smoke")).await;
    assert_eq!(smoke.len(), 1, "smoke alarm through the external broker");
    assert_eq!(smoke[0]["level"], "red");
    assert_eq!(smoke[0]["location"]["floor"], 3);
    let gas = watch.collect(1, WAIT, raised("gas")).await;
    assert_eq!(
        gas.len(),
        1,
        "zigbee2mqtt gas alarm through the external broker"
    );
    assert_eq!(gas[0]["level"], "red");

    // The site's broker restarts: the gateway reconnects, subscribes again and hears the
    // smoke detector clear.
    upstream.restart();
    wait_for_nth(&mut gateway, "ingest subscribed", 2);
    let mut watch = client(&upstream, "w-external-2").await;
    watch.subscribe("shouwang/test-site/alerts/#").await;
    let sensors = client(&upstream, "sensors-2").await;
    sensors
        .publish("sensors/b1-smoke/state", r#"{"smoke":false}"#)
        .await;
    let resolved = watch
        .collect(1, WAIT, |v| {
            v["kind"] == "smoke" && v["event"] == "resolved"
        })
        .await;
    assert_eq!(resolved.len(), 1, "the clear after the restart was heard");
    assert_eq!(resolved[0]["id"], smoke[0]["id"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_added_by_reload_on_its_own_topic_is_subscribed_and_alarms() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(dir.path());
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config(&upstream)).unwrap();
    let data = dir.path().join("data");
    let mut gateway = Gateway::start(&path, &data);
    gateway.wait_for_message("gateway ready", Duration::from_secs(30));
    wait_for_nth(&mut gateway, "ingest subscribed", 1);
    let mut watch = client(&upstream, "w-reload").await;
    watch.subscribe("shouwang/test-site/alerts/#").await;
    let sensors = client(&upstream, "sensors-reload").await;

    // A legacy gas detector on a topic outside the sensor families: nobody reads it yet.
    let legacy = "[[devices]]\nid = \"legacy-gas\"\nkind = \"gas\"\ntopic = \"plant/boiler-room/gas\"\nlocation = { building = \"b1\", floor = 1 }\n";
    std::fs::write(&path, format!("{}\n{legacy}", config(&upstream))).unwrap();
    let out = std::process::Command::new(e2e::bin("gateway"))
        .args(["reload", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("device legacy-gas added"), "{text}");
    // The gateway subscribes the new topic on its running connection (no reconnect).
    let deadline = std::time::Instant::now() + WAIT;
    let mut raised_gas = Vec::new();
    while raised_gas.is_empty() && std::time::Instant::now() < deadline {
        sensors
            .publish("plant/boiler-room/gas", r#"{"gas_lel_pct":40}"#)
            .await;
        raised_gas = watch
            .collect(1, Duration::from_millis(500), raised("gas"))
            .await;
    }
    assert_eq!(raised_gas.len(), 1, "the reloaded device alarms");
    assert_eq!(raised_gas[0]["source"]["id"], "legacy-gas");
    gateway.drain_log();
    let subscribed = gateway
        .seen
        .iter()
        .filter(|l| l.contains("\"ingest subscribed\""))
        .count();
    assert_eq!(
        subscribed, 1,
        "no reconnect: the same session subscribed the new topic"
    );
}
