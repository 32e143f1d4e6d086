//! A compound forwards to two upstreams (issue 19): its platform (`[uplink]`) and its street
//! police station (`[station_link]`), each a real mosquitto over TLS. Each has a durable
//! outbox copy of its own: a station that is down holds back nothing of the platform's and
//! the other way round, and each gets every alert event in order when it returns. Staff at
//! the station acknowledge through the station link.

use std::time::Duration;

use e2e::mqtt::Mqtt;
use e2e::upstream::{Collector, Upstream, OBSERVER};
use e2e::{write_config, Gateway};

const SITE: &str = r#"
[[locations.buildings]]
id = "b1"
name = "1号楼"
floors = 18

[rules.timing]
debounce_s = 0
clear_hold_s = 0

[[devices]]
id = "b1-smoke"
kind = "smoke"
location = { building = "b1", floor = 3 }
"#;

const WAIT: Duration = Duration::from_secs(20);

/// The `[station_link]` for `station`: the same keys as `[uplink]`.
fn station_toml(station: &Upstream) -> String {
    station
        .uplink_toml("gw.pass")
        .replace("[uplink]", "[station_link]")
        .replace("[uplink.outbox]", "[station_link.outbox]")
}

/// (id, seq) of every alert event received, first arrival of each, in arrival order.
fn events(c: &Collector) -> Vec<(String, u64)> {
    let mut seen = std::collections::BTreeSet::new();
    c.alerts()
        .into_iter()
        .filter(|r| seen.insert(r.seq))
        .map(|r| (r.json["id"].as_str().unwrap_or("").to_owned(), r.seq))
        .collect()
}

async fn alarm_cycle(sensor: &Mqtt) {
    sensor
        .publish("sensors/b1-smoke/state", r#"{"smoke":true}"#)
        .await;
    sensor
        .publish("sensors/b1-smoke/state", r#"{"smoke":false}"#)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_upstream_gets_every_alert_in_order_while_the_other_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut platform = Upstream::start(&dir.path().join("platform"));
    let mut station = Upstream::start(&dir.path().join("station"));
    let body = format!(
        "{SITE}\n{}\n{}",
        platform.uplink_toml("gw.pass"),
        station_toml(&station)
    );
    let config = write_config(dir.path(), &body);
    let mut gw = Gateway::start(&config, &dir.path().join("data"));
    let broker = gw.wait_ready();
    let at_platform = Collector::start(&platform, "platform-watch").await;
    let at_station = Collector::start(&station, "station-watch").await;
    let sensor = Mqtt::connect(broker, "b1-smoke").await;

    // The WAN to the platform is cut: the station still hears the compound at once.
    platform.stop();
    for _ in 0..3 {
        alarm_cycle(&sensor).await;
    }
    assert!(
        at_station.wait_until(WAIT, |r| r.len() >= 6).await,
        "raised + resolved three times at the station: {:?}",
        events(&at_station)
    );
    // Now the station is down and the platform back: the platform gets all of it, and
    // the station, once back, what it missed. (The collectors keep persistent sessions.)
    station.stop();
    alarm_cycle(&sensor).await;
    platform.restart();
    assert!(
        at_platform.wait_until(WAIT, |r| distinct(r) >= 8).await,
        "all eight events at the platform: {:?}",
        events(&at_platform)
    );
    station.restart();
    assert!(
        at_station.wait_until(WAIT, |r| distinct(r) >= 8).await,
        "the two events the station missed: {:?}",
        events(&at_station)
    );
    let platform_events = events(&at_platform);
    let seqs: Vec<u64> = platform_events.iter().map(|(_, s)| *s).collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    assert_eq!(seqs, sorted, "in order at the platform");
    assert_eq!(seqs.len(), 8);
    assert_eq!(
        events(&at_station),
        platform_events,
        "the same events (id, seq) in the same order at the station"
    );

    // A new alarm; the duty officer at the station acknowledges it there.
    sensor
        .publish("sensors/b1-smoke/state", r#"{"smoke":true}"#)
        .await;
    assert!(at_station.wait_until(WAIT, |r| distinct(r) >= 9).await);
    let raised = at_station.alerts().last().unwrap().json.clone();
    assert_eq!(raised["event"], "raised");
    let mut o = rumqttc::MqttOptions::new("station-console", "127.0.0.1", station.plain_port);
    o.set_credentials(OBSERVER.0, OBSERVER.1);
    let console = Mqtt::connect_with(o).await;
    let ack = serde_json::json!({ "id": raised["id"], "by": "警务站 张警官" });
    console
        .publish("shouwang/test-site/commands/ack", ack.to_string())
        .await;
    let acked = |r: &[e2e::upstream::Received]| {
        r.iter()
            .any(|a| a.json["event"] == "acknowledged" && a.json["id"] == raised["id"])
    };
    assert!(
        at_platform.wait_until(WAIT, acked).await,
        "the station's acknowledgement reaches the compound and the platform"
    );
    let a = at_platform
        .alerts()
        .into_iter()
        .find(|a| a.json["event"] == "acknowledged")
        .unwrap();
    assert_eq!(a.json["acknowledged_by"], "警务站 张警官");
    gw.drain_log();
}

fn distinct(r: &[e2e::upstream::Received]) -> usize {
    r.iter()
        .map(|a| a.seq)
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}
