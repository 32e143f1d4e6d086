//! The whole chain with the simulators, as the demo runs it: every hazard kind raised once
//! by `sim sensors` against the real `gateway` binary, whose uplink reaches a real mosquitto
//! (TLS, password) through a `sim link` proxy; the link is cut in the middle of the hazards
//! and restored, and `sim verify` on the platform side must then count every alert event
//! the gateway recorded — none missing, `seq` in order within each level (re-sent duplicates
//! allowed).

use std::time::{Duration, Instant};

use e2e::sim::{only_devices, recorded_alert_events, SITE};
use e2e::upstream::{Upstream, PASSWORD, USER};
use e2e::{eventually, reached, write_config, Gateway};
use serde_json::Value;
use simulators::mqtt::Endpoint;
use simulators::sensors::{self, Options, Scenario};
use simulators::verify::{Verifier, VerifyOptions};
use tokio_util::sync::CancellationToken;

/// One device set per scenario, so that the six runs can play at the same time.
const DEVICES: &str = r#"
[[devices]]
id = "k-heat"
kind = "heat"
location = { building = "b1", unit = "u1", floor = 12, room = "1201" }
[[devices]]
id = "k-smoke"
kind = "smoke"
format = "zigbee2mqtt"
friendly_name = "kitchen_1201_smoke"
location = { building = "b1", unit = "u1", floor = 12, room = "1201" }

[[devices]]
id = "g-gas"
kind = "gas"
location = { building = "b1", unit = "u1", floor = 6, room = "0601" }
[[devices]]
id = "g-valve"
kind = "valve"
location = { building = "b1", unit = "u1", floor = 6, room = "0601" }

[[devices]]
id = "pump-leak"
kind = "water_leak"
format = "zigbee2mqtt"
friendly_name = "pump_room_leak"
location = { building = "b1", unit = "u1", floor = 1, room = "pump room" }

[[devices]]
id = "bay-01"
kind = "ebike_battery"
location = { area = "shed", room = "bay 01" }
[[devices]]
id = "shed-smoke"
kind = "smoke"
location = { area = "shed" }

[[devices]]
id = "bay-02"
kind = "ebike_battery"
location = { area = "shed", room = "bay 02" }
thresholds = { theft_window = { from = "00:00", to = "00:00" } }

[[devices]]
id = "lobby-sos"
kind = "sos"
location = { building = "b1", floor = 1 }

[[rules.linkage]]
on = "gas"
min_level = "orange"
action = "close_valve"
targets = ["g-valve"]
"#;

/// (scenario, its devices, speed-up).
const PLAYS: [(Scenario, &[&str], f64); 6] = [
    (Scenario::KitchenFire, &["k-heat", "k-smoke"], 15.0),
    (Scenario::GasLeak, &["g-gas", "g-valve"], 20.0),
    (Scenario::WaterLeak, &["pump-leak"], 20.0),
    (
        Scenario::EbikeThermalRunaway,
        &["bay-01", "shed-smoke"],
        30.0,
    ),
    (Scenario::BatteryTheft, &["bay-02"], 20.0),
    (Scenario::Sos, &["lobby-sos"], 20.0),
];

#[tokio::test(flavor = "multi_thread")]
async fn every_hazard_raised_across_a_cut_wan_link_reaches_the_platform_with_none_missing() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(tmp.path());
    let stop = CancellationToken::new();
    let _stop_link = stop.clone().drop_guard();
    let wan = simulators::link::start(
        "127.0.0.1:0",
        &format!("127.0.0.1:{}", upstream.tls_port),
        stop.clone(),
    )
    .await
    .unwrap();

    // The platform side listens before anything can be sent.
    let platform = Endpoint {
        username: Some(USER.to_owned()),
        password: Some(PASSWORD.to_owned()),
        ..Endpoint::parse(&format!("127.0.0.1:{}", upstream.plain_port)).unwrap()
    };
    let verifier = Verifier::subscribe(&VerifyOptions::new(platform, "test-site", 0))
        .await
        .unwrap();

    // The gateway's uplink goes through the link (TLS end to end: the proxy only relays).
    let uplink = upstream.uplink_toml_via(wan.listen.port(), "gw.pass");
    let config_path = write_config(tmp.path(), &format!("{SITE}\n{uplink}\n{DEVICES}"));
    let config = edge_config::load(&config_path).unwrap_or_else(|e| panic!("config:\n{e}"));
    let data = tmp.path().join("data");
    let mut gateway = Gateway::start(&config_path, &data);
    let broker = gateway.wait_ready();
    gateway.wait_for_message("uplink connected", Duration::from_secs(20));

    // Every hazard kind at once, each scenario on its own devices.
    let runs: Vec<_> = PLAYS
        .iter()
        .map(|&(scenario, ids, speed)| {
            let part = only_devices(&config, ids);
            let mut options = Options::new(Endpoint::parse(&broker.to_string()).unwrap(), scenario);
            options.speed = speed;
            options.seed = 11;
            tokio::spawn(async move {
                sensors::run(&part, &options, CancellationToken::new())
                    .await
                    .map_err(|e| format!("{scenario}: {e}"))
            })
        })
        .collect();

    // Cut the WAN once the first alerts went through; restore it once more were recorded
    // and waited in the outbox, not delivered.
    eventually(
        Duration::from_secs(20),
        "an alert reaches the platform while the link is up",
        || reached(verifier.tally().unique(), 2),
    )
    .await;
    wan.down();
    let at_cut = recorded_alert_events(&data);
    // The gateway loses its session, then finds the link down: a reconnect is refused. From
    // then on nothing it records can reach the platform until the link is restored.
    for _ in 0..2 {
        gateway.wait_for_message("uplink connection failed", Duration::from_secs(20));
    }
    eventually(
        Duration::from_secs(20),
        "the hazards raise alert events while the link is down",
        || reached(recorded_alert_events(&data), at_cut + 3),
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "alert events wait in the outbox while the link is down (a backlog of 3)",
        || {
            let (recorded, arrived) = (recorded_alert_events(&data), verifier.tally().unique());
            match recorded.saturating_sub(arrived) {
                backlog if backlog >= 3 => Ok(()),
                backlog => Err(format!(
                    "{recorded} recorded, {arrived} arrived: backlog {backlog}"
                )),
            }
        },
    )
    .await;
    assert!(
        wan.stats.cut.load(std::sync::atomic::Ordering::Relaxed) >= 1,
        "the gateway's open uplink connection was cut"
    );
    wan.up();

    let mut targets = Vec::new();
    for run in runs {
        let report = run.await.unwrap().unwrap();
        targets.extend(report.targets);
    }
    targets.sort();
    assert_eq!(
        targets.len(),
        9,
        "every scenario found its devices: {targets:?}"
    );

    // The gateway's record is complete once it has been still for 3 s (clear holds are 1 s):
    // a quiet spell is the only sign that nothing more is coming, so this polls for one.
    let mut last = (recorded_alert_events(&data), Instant::now());
    while last.1.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = recorded_alert_events(&data);
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    let recorded = last.0;

    let verdict = verifier
        .finish(
            recorded,
            Duration::from_secs(20),
            Duration::from_millis(500),
            CancellationToken::new(),
        )
        .await;
    eprintln!("{verdict}");
    assert_eq!(verdict.missing, 0, "{verdict}");
    assert!(verdict.gaps.is_empty(), "{verdict}");
    assert!(verdict.reordered.is_empty(), "{verdict}");
    assert_eq!(verdict.unique, recorded, "{verdict}");
    assert!(verdict.ok(), "{verdict}");

    // Every hazard kind is among what the gateway raised (and so among what arrived).
    gateway.drain_log();
    let kinds = raised_kinds(&data);
    for kind in [
        "heat",
        "smoke",
        "gas",
        "water_leak",
        "ebike_battery",
        "battery_removed",
        "sos",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "no {kind} alert: {kinds:?}"
        );
    }
    eprintln!("end to end in {:?}", started.elapsed());
}

/// The kinds of the alerts the gateway recorded.
fn raised_kinds(data: &std::path::Path) -> Vec<String> {
    let conn = rusqlite::Connection::open_with_flags(
        data.join("shouwang.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = conn
        .prepare("SELECT body FROM alert_events WHERE event = 'raised' ORDER BY seq")
        .unwrap();
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|b| {
            serde_json::from_str::<Value>(&b.unwrap()).unwrap()["kind"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    rows
}
