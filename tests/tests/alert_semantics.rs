//! What a staff "resolve" means, end to end with the real gateway binary: a gas detector in
//! building 2 unit 3 that keeps reporting its reading, the duty officer resolving the alert on
//! the console API, and the residents' topic of that unit watched all along.
//!
//! A resolve resets the rule's condition: while the detector still reports the hazard a new
//! alert follows at once and residents get no all-clear; once the gas is gone residents are
//! told it was resolved by staff, and the next leak raises a new alert.

use std::net::SocketAddr;
use std::time::Duration;

use e2e::mqtt::Mqtt;
use e2e::{http, write_config, Gateway};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const SITE: &str = r#"
[[broker.readers]]
username = "b2-display"
password = "display-secret"
topics = ["residents/b2/#"]

[[locations.buildings]]
id = "b2"
name = "2号楼"
floors = 18
[[locations.buildings.units]]
id = "u3"
name = "3单元"

[[devices]]
id = "b2-u3-501-gas"
kind = "gas"
location = { building = "b2", unit = "u3", floor = 5, room = "501" }

[[console.staff]]
username = "duty"
display_name = "值班员"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2hvdXdhbmctZGVtby1zYQ$pMAMAJaZaTelU1nfxz3/8UfuGG6UrIxQfDFnKLoYXNk"
role = "staff"
"#;

/// The unit's resident display: resident notices are readable only by a login granted them.
async fn resident(broker: SocketAddr) -> Mqtt {
    let mut options = rumqttc::MqttOptions::new("resident-b2-u3", "127.0.0.1", broker.port());
    options.set_credentials("b2-display", "display-secret");
    Mqtt::connect_with(options).await
}

const GAS_TOPIC: &str = "sensors/b2-u3-501-gas/state";
const WAIT: Duration = Duration::from_secs(10);

struct Site {
    _dir: tempfile::TempDir,
    _gateway: Gateway,
    broker: SocketAddr,
    console: String,
    db: std::path::PathBuf,
}

/// Starts the gateway with `timing` as its `[rules.timing]`.
fn start(timing: &str) -> Site {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &format!("[rules.timing]\n{timing}\n{SITE}"));
    let data = dir.path().join("data");
    let mut gateway = Gateway::start(&config, &data);
    let ready = gateway.wait_for_message("gateway ready", Duration::from_secs(30));
    Site {
        broker: ready["broker"].as_str().unwrap().parse().unwrap(),
        console: ready["console"].as_str().unwrap().to_owned(),
        db: data.join("shouwang.db"),
        _gateway: gateway,
        _dir: dir,
    }
}

/// The detector reporting `lel` %LEL every 200 ms until `stop`.
fn keep_reporting(
    sensor: Mqtt,
    lel: f64,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Mqtt> {
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            sensor
                .publish(GAS_TOPIC, format!(r#"{{"gas_lel_pct":{lel}}}"#))
                .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        sensor
    })
}

/// Waits until `n` readings of `lel` %LEL from the detector are stored as telemetry. The rules
/// stage hands each reading to telemetry and then applies it before taking the next one, so
/// once the second of two is stored the first has been applied.
async fn wait_for_readings(db: &std::path::Path, lel: f64, n: i64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let stored: i64 =
            rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .and_then(|c| {
                    c.query_row(
                        "SELECT COUNT(*) FROM outbox WHERE stream = 1
                 AND json_extract(payload, '$.device') = 'b2-u3-501-gas'
                 AND json_extract(payload, '$.values.gas_lel_pct') = ?1",
                        [lel],
                        |r| r.get(0),
                    )
                })
                .unwrap_or(0);
        if stored >= n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{stored} of {n} readings of {lel} %LEL stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Resolves alert `id` as the duty officer (password `shouwang-demo`); returns the answer.
fn staff_resolve(console: &str, id: &str) -> (u16, Value) {
    let login = http::request(
        console,
        "POST",
        "/login",
        &["Content-Type: application/json"],
        r#"{"username":"duty","password":"shouwang-demo"}"#,
    );
    assert_eq!(login.status, 200, "{}", login.raw);
    let cookie = login
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let r = http::request(
        console,
        "POST",
        &format!("/api/alerts/{id}/resolve"),
        &[&format!("Cookie: {cookie}")],
        "",
    );
    let body = serde_json::from_str(r.body()).unwrap_or(Value::Null);
    (r.status, body)
}

fn gas(event: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["kind"] == "gas" && v["event"] == event
}

#[tokio::test(flavor = "multi_thread")]
async fn resolving_while_gas_persists_does_not_silence_the_detector() {
    let site = start("debounce_s = 0\nclear_hold_s = 1\nescalate_after_s = 600");
    let mut alerts = Mqtt::connect(site.broker, "watch-alerts").await;
    alerts.subscribe("shouwang/test-site/alerts/#").await;
    let mut residents = resident(site.broker).await;
    residents.subscribe("residents/b2/u3/alerts").await;

    let stop = CancellationToken::new();
    let sensor = Mqtt::connect(site.broker, "b2-u3-501-gas").await;
    let reporting = keep_reporting(sensor, 45.0, stop.clone());
    let raised = alerts.collect(1, WAIT, gas("raised")).await;
    assert_eq!(raised.len(), 1, "45 %LEL raises a gas alert");
    let first = raised[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(raised[0]["level"], "red");
    let notice = residents
        .collect(1, WAIT, |n| n["status"] == "active")
        .await;
    assert_eq!(notice.len(), 1, "residents are warned");
    let episode = notice[0]["id"].clone();

    let console = site.console.clone();
    let id = first.clone();
    let (status, resolved) = tokio::task::spawn_blocking(move || staff_resolve(&console, &id))
        .await
        .unwrap();
    assert_eq!(status, 200, "{resolved}");
    assert_eq!(resolved["resolved_by"], "duty");
    assert_eq!(resolved["still_reported"], true, "{resolved}");

    // The detector still reads 45 %LEL: a new alert, not silence.
    let again = alerts.collect(1, WAIT, gas("raised")).await;
    assert_eq!(
        again.len(),
        1,
        "no new alert while the gas persists: the detector went deaf"
    );
    assert_ne!(again[0]["id"].as_str(), Some(first.as_str()));
    assert_eq!(again[0]["level"], "red");
    assert_eq!(again[0]["continues"].as_str(), Some(first.as_str()));

    // Residents: no all-clear while the gas persists; the warning continues under its id.
    let heard = residents.drain(Duration::from_secs(3)).await;
    let notices: Vec<Value> = heard.iter().map(|m| m.json()).collect();
    assert!(
        notices
            .iter()
            .all(|n| n["status"] == "active" && n["id"] == episode),
        "residents were told something else while the gas persists: {notices:?}"
    );

    // The gas goes: the detector itself ends it, and residents get the all-clear.
    stop.cancel();
    let sensor = reporting.await.unwrap();
    sensor.publish(GAS_TOPIC, r#"{"gas_lel_pct":0.0}"#).await;
    let clear = residents
        .collect(1, WAIT, |n| n["status"] == "all_clear")
        .await;
    assert_eq!(clear.len(), 1, "an all-clear once the gas is gone");
    assert_eq!(clear[0]["id"], episode);
    assert_eq!(clear[0]["cleared_by"], "sensor");
    let auto = alerts.collect(1, WAIT, gas("resolved")).await;
    assert_eq!(auto[0]["resolved_by"], "auto");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_staff_resolve_once_the_gas_is_gone_tells_residents_and_the_next_leak_raises_anew() {
    // A long clear-hold: the gas is gone but the alert is still active when staff resolve it.
    let site = start("debounce_s = 0\nclear_hold_s = 120\nescalate_after_s = 600");
    let mut alerts = Mqtt::connect(site.broker, "watch-alerts").await;
    alerts.subscribe("shouwang/test-site/alerts/#").await;
    let mut residents = resident(site.broker).await;
    residents.subscribe("residents/b2/u3/alerts").await;
    let sensor = Mqtt::connect(site.broker, "b2-u3-501-gas").await;

    sensor.publish(GAS_TOPIC, r#"{"gas_lel_pct":45.0}"#).await;
    let raised = alerts.collect(1, WAIT, gas("raised")).await;
    assert_eq!(raised.len(), 1);
    let first = raised[0]["id"].as_str().unwrap().to_owned();
    // The gas is gone: two normal readings, the first of them surely applied by the rules.
    sensor.publish(GAS_TOPIC, r#"{"gas_lel_pct":0.0}"#).await;
    sensor.publish(GAS_TOPIC, r#"{"gas_lel_pct":0.0}"#).await;
    wait_for_readings(&site.db, 0.0, 2).await;

    let console = site.console.clone();
    let id = first.clone();
    let (status, resolved) = tokio::task::spawn_blocking(move || staff_resolve(&console, &id))
        .await
        .unwrap();
    assert_eq!(status, 200, "{resolved}");
    assert!(resolved.get("still_reported").is_none(), "{resolved}");
    let clear = residents
        .collect(1, WAIT, |n| n["status"] == "all_clear")
        .await;
    assert_eq!(
        clear.len(),
        1,
        "the all-clear of a staff resolve once the gas is gone"
    );
    assert_eq!(clear[0]["cleared_by"], "staff");
    assert!(
        clear[0]["message"]["en"]
            .as_str()
            .unwrap()
            .contains("staff"),
        "{}",
        clear[0]
    );
    assert!(
        alerts
            .collect(1, Duration::from_secs(2), gas("raised"))
            .await
            .is_empty(),
        "nothing raised while the detector reads normal"
    );

    // A new leak at the same level is a new alert, not a continuation of the resolved one.
    sensor.publish(GAS_TOPIC, r#"{"gas_lel_pct":45.0}"#).await;
    let next = alerts.collect(1, WAIT, gas("raised")).await;
    assert_eq!(next.len(), 1, "the next leak was not heard");
    assert_ne!(next[0]["id"].as_str(), Some(first.as_str()));
    assert!(next[0].get("continues").is_none(), "{}", next[0]);
}
