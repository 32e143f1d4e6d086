//! A street police station over its compounds (issue 19), end to end: two compound gateways
//! and one station gateway (real binaries), a mosquitto "platform" (TLS) all three forward
//! to. The compounds reach the station over their `[station_link]`, logging in to the
//! station's embedded broker with their own credentials.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e::http;
use e2e::mqtt::Mqtt;
use e2e::upstream::{free_port, Upstream};
use e2e::Gateway;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

/// The demo duty officer's password hash ("shouwang-demo").
const DUTY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2hvdXdhbmctZGVtby1zYQ$pMAMAJaZaTelU1nfxz3/8UfuGG6UrIxQfDFnKLoYXNk";

/// A site's `[site]`, listeners on loopback (`broker_port` for the embedded broker) and body.
fn site_config(dir: &Path, id: &str, kind: &str, broker_port: u16, body: &str) -> PathBuf {
    site_config_on(dir, id, kind, (broker_port, 0), body)
}

/// [`site_config`] with the console on `ports.1` too.
fn site_config_on(dir: &Path, id: &str, kind: &str, ports: (u16, u16), body: &str) -> PathBuf {
    let (broker_port, console_port) = ports;
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[site]\nid = \"{id}\"\nname = \"{id} 名\"\nkind = \"{kind}\"\n\n[broker]\nbind = \"127.0.0.1:{broker_port}\"\n\n[console]\nbind = \"127.0.0.1:{console_port}\"\n\n{body}\n"
        ),
    )
    .unwrap();
    path
}

fn compound_body(id: &str, station_port: u16, platform: &Upstream) -> String {
    format!(
        r#"
[[locations.buildings]]
id = "b1"
name = "1号楼"
floors = 18

[rules.timing]
debounce_s = 0
clear_hold_s = 0

[[devices]]
id = "b1-gas"
kind = "gas"
location = {{ building = "b1", floor = 5, room = "501" }}

[station_link]
host = "127.0.0.1"
port = {station_port}
username = "{id}-link"
password = "{id}-secret"
keep_alive_s = 5

[station_link.outbox]
retry_backoff_max_s = 1
{uplink}
"#,
        uplink = platform.uplink_toml("gw.pass"),
    )
}

fn station_body(platform: &Upstream) -> String {
    format!(
        r#"
[[compounds]]
id = "compound-a"
name = "幸福里小区"
username = "compound-a-link"
password = "compound-a-secret"

[[compounds]]
id = "compound-b"
name = "和平苑"
username = "compound-b-link"
password = "compound-b-secret"
forward = true

[[console.staff]]
username = "duty"
display_name = "张警官"
password_hash = "{DUTY_HASH}"
role = "admin"
{uplink}
"#,
        uplink = platform.uplink_toml("gw.pass"),
    )
}

struct Station {
    gateway: Gateway,
    console: String,
}

fn start_station(dir: &Path, port: u16, platform: &Upstream) -> Station {
    let config = site_config(
        dir,
        "station-1",
        "street_station",
        port,
        &station_body(platform),
    );
    let mut gateway = Gateway::start(&config, &dir.join("data"));
    let ready = gateway.wait_for_message("gateway ready", Duration::from_secs(30));
    let console = ready["console"].as_str().unwrap().to_owned();
    Station { gateway, console }
}

fn start_compound(
    dir: &Path,
    id: &str,
    station_port: u16,
    platform: &Upstream,
) -> (Gateway, SocketAddr) {
    let config = site_config(
        dir,
        id,
        "compound",
        0,
        &compound_body(id, station_port, platform),
    );
    let mut gateway = Gateway::start(&config, &dir.join("data"));
    let broker = gateway.wait_ready();
    (gateway, broker)
}

fn login(console: &str) -> String {
    let body = serde_json::json!({ "username": "duty", "password": "shouwang-demo" }).to_string();
    let r = http::request(
        console,
        "POST",
        "/login",
        &["Content-Type: application/json"],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.raw);
    let cookie = r.header("set-cookie").expect("a session cookie");
    format!("Cookie: {}", cookie.split(';').next().unwrap())
}

/// The station's list of compound alert events.
fn station_alerts(console: &str, cookie: &str) -> Vec<Value> {
    let r = http::request(console, "GET", "/api/compounds/alerts", &[cookie], "");
    let v: Value = serde_json::from_str(r.body()).unwrap_or(Value::Null);
    v["alerts"].as_array().cloned().unwrap_or_default()
}

/// (id, seq) of every alert event a compound recorded, in seq order, from its database.
fn recorded(data: &Path) -> Vec<(String, u64)> {
    let conn = rusqlite::Connection::open_with_flags(
        data.join("shouwang.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = conn
        .prepare("SELECT alert_id, seq FROM alert_events ORDER BY seq")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_station_hears_its_compounds_with_the_platform_cut_and_the_platform_gets_everything_once()
{
    let dir = tempfile::tempdir().unwrap();
    let mut platform = Upstream::start(&dir.path().join("platform"));
    let station_port = free_port();
    let mut station = start_station(&dir.path().join("station"), station_port, &platform);
    let (mut a, a_broker) =
        start_compound(&dir.path().join("a"), "compound-a", station_port, &platform);
    let (_b, b_broker) =
        start_compound(&dir.path().join("b"), "compound-b", station_port, &platform);
    let cookie = login(&station.console);

    // The platform's own subscriber, with a persistent session: it gets what the gateways
    // deliver after the outage.
    let mut at_platform = Mqtt::connect_with({
        let mut o = rumqttc::MqttOptions::new("platform-watch", "127.0.0.1", platform.plain_port);
        o.set_credentials(e2e::upstream::OBSERVER.0, e2e::upstream::OBSERVER.1);
        o.set_clean_session(false);
        o
    })
    .await;
    at_platform.subscribe("shouwang/+/alerts").await;

    // The WAN to the platform is cut. A gas alarm in compound A is on the station's console
    // within a second or so.
    platform.stop();
    let a_gas = Mqtt::connect(a_broker, "b1-gas").await;
    let sent = Instant::now();
    a_gas
        .publish("sensors/b1-gas/state", r#"{"gas_lel_pct":30}"#)
        .await;
    let raised = e2e::eventually(WAIT, "A's gas alarm at the station", || {
        station_alerts(&station.console, &cookie)
            .into_iter()
            .find(|a| a["site"] == "compound-a" && a["kind"] == "gas")
            .ok_or_else(|| "not yet".to_owned())
    })
    .await;
    let latency = sent.elapsed();
    eprintln!("compound alarm → station console: {latency:?}");
    assert!(latency < Duration::from_secs(3), "{latency:?}");
    assert_eq!(raised["level"], "red");
    assert_eq!(raised["compound_name"], "幸福里小区");

    // Acknowledged at the station: the acknowledgement is on A's own alert, saying who and
    // where, and comes back to the station.
    let mut a_watch = Mqtt::connect(a_broker, "a-watch").await;
    a_watch.subscribe("shouwang/compound-a/alerts/#").await;
    let id = raised["id"].as_str().unwrap().to_owned();
    let r = http::request(
        &station.console,
        "POST",
        &format!("/api/compounds/alerts/{id}/ack"),
        &[&cookie],
        "",
    );
    assert_eq!(r.status, 202, "{}", r.raw);
    let acked = a_watch
        .collect(1, WAIT, |v| {
            v["id"] == id.as_str() && v["state"] == "acknowledged"
        })
        .await;
    assert_eq!(acked.len(), 1, "A's alert is acknowledged");
    assert_eq!(acked[0]["acknowledged_by"], "张警官 @ station-1 名");
    e2e::eventually(WAIT, "the acknowledgement back at the station", || {
        station_alerts(&station.console, &cookie)
            .into_iter()
            .find(|a| a["id"] == id.as_str() && a["state"] == "acknowledged")
            .ok_or_else(|| "not yet".to_owned())
    })
    .await;

    // Compound B cannot speak for A: not on A's topic (its login may not publish there),
    // nor on its own topic with A's site in the event.
    let mut o = rumqttc::MqttOptions::new("b-forger", "127.0.0.1", station_port);
    o.set_credentials("compound-b-link", "compound-b-secret");
    let forger = Mqtt::connect_with(o).await;
    let forged = |id: &str| {
        serde_json::json!({
            "id": id, "seq": 999_999, "site": "compound-a", "kind": "gas", "level": "red",
            "state": "resolved", "event": "resolved", "updated_at": "2026-11-29T00:00:00.000Z",
        })
        .to_string()
    };
    forger
        .publish("shouwang/compound-a/alerts", forged(&id))
        .await;
    forger
        .publish("shouwang/compound-b/alerts", forged("FORGED-B-AS-A"))
        .await;
    let b_gas = Mqtt::connect(b_broker, "b1-gas-b").await;
    b_gas
        .publish("sensors/b1-gas/state", r#"{"gas_lel_pct":30}"#)
        .await;
    e2e::eventually(WAIT, "B's own alarm at the station", || {
        station_alerts(&station.console, &cookie)
            .into_iter()
            .find(|a| a["site"] == "compound-b")
            .ok_or_else(|| "not yet".to_owned())
    })
    .await;
    // Compound health: both linked and beating, A's red alert counted on its tile.
    let r = http::request(&station.console, "GET", "/api/compounds", &[&cookie], "");
    let health: Value = serde_json::from_str(r.body()).unwrap();
    let tiles = health["compounds"].as_array().unwrap();
    assert_eq!(tiles.len(), 2, "{health}");
    for t in tiles {
        assert_eq!(t["link"], "online", "{t}");
        assert!(
            t["last_heartbeat"].is_string(),
            "a heartbeat on record: {t}"
        );
    }
    assert_eq!(tiles[0]["name"], "幸福里小区");
    assert_eq!(tiles[0]["active"]["red"], 1, "{health}");
    let all = station_alerts(&station.console, &cookie);
    let a_alert = all.iter().find(|a| a["id"] == id.as_str()).unwrap();
    assert_eq!(
        a_alert["state"], "acknowledged",
        "B's forgery changed nothing: {a_alert}"
    );
    assert!(all.iter().all(|a| a["id"] != "FORGED-B-AS-A"));

    // A's link to the station is cut (the station stops) while A's alarm clears and comes
    // back twice; when the station returns every event arrives, in order.
    station.gateway.signal(libc::SIGTERM);
    assert!(station.gateway.wait_exit(WAIT).is_some());
    for lel in [0, 30, 0, 30] {
        a_gas
            .publish(
                "sensors/b1-gas/state",
                format!(r#"{{"gas_lel_pct":{lel}}}"#),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    station = start_station(&dir.path().join("station"), station_port, &platform);
    let cookie = login(&station.console);
    let a_events = || recorded(&dir.path().join("a").join("data"));
    e2e::eventually(WAIT, "every event of A at the station", || {
        let want: std::collections::BTreeSet<String> =
            a_events().into_iter().map(|(id, _)| id).collect();
        let got: std::collections::BTreeSet<String> = station_alerts(&station.console, &cookie)
            .into_iter()
            .filter(|a| a["site"] == "compound-a")
            .filter_map(|a| a["id"].as_str().map(str::to_owned))
            .collect();
        (want == got)
            .then_some(())
            .ok_or(format!("{want:?} vs {got:?}"))
    })
    .await;
    // Each alert's latest event at the station is A's latest for it.
    let latest_at_a: std::collections::HashMap<String, u64> = a_events().into_iter().collect();
    for e in station_alerts(&station.console, &cookie)
        .into_iter()
        .filter(|a| a["site"] == "compound-a")
    {
        assert_eq!(
            e["seq"].as_u64(),
            latest_at_a.get(e["id"].as_str().unwrap()).copied(),
            "{e}"
        );
    }

    // The platform returns: it holds every alert of A, B and the station, once by id.
    platform.restart();
    let want: std::collections::BTreeSet<(String, u64)> = a_events()
        .into_iter()
        .chain(recorded(&dir.path().join("b").join("data")))
        .chain(recorded(&dir.path().join("station").join("data")))
        .collect();
    let b_events: std::collections::BTreeSet<(String, u64)> =
        recorded(&dir.path().join("b").join("data"))
            .into_iter()
            .collect();
    let mut got = std::collections::BTreeSet::new();
    // B is forwarded by the station too (`forward = true`): the same events, unchanged, on
    // the station's stream.
    let mut via_station = std::collections::BTreeSet::new();
    let mut a_via_station = 0;
    let deadline = Instant::now() + WAIT;
    while !(want.is_subset(&got) && b_events.is_subset(&via_station)) && Instant::now() < deadline {
        if let Some(m) = at_platform.next(Duration::from_millis(500)).await {
            let v = m.json();
            if let (Some(id), Some(seq)) = (v["id"].as_str(), v["seq"].as_u64()) {
                got.insert((id.to_owned(), seq));
                if m.topic == "shouwang/station-1/alerts" && v["site"] == "compound-b" {
                    via_station.insert((id.to_owned(), seq));
                }
                if m.topic == "shouwang/station-1/alerts" && v["site"] == "compound-a" {
                    a_via_station += 1;
                }
            }
        }
    }
    let missing: Vec<_> = want.difference(&got).collect();
    assert!(missing.is_empty(), "missing at the platform: {missing:?}");
    assert_eq!(
        via_station, b_events,
        "B's events through the station, unchanged"
    );
    assert_eq!(a_via_station, 0, "A is not forwarded (no `forward`)");
    a.drain_log();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compounds_snapshot_is_fetched_only_when_the_station_looks_and_only_with_its_login() {
    let dir = tempfile::tempdir().unwrap();
    let (station_port, a_console_port, camera_port) = (free_port(), free_port(), free_port());
    let _camera = e2e::sim::start_camera(camera_port);
    let station_body = format!(
        "[[compounds]]\nid = \"compound-a\"\nname = \"幸福里小区\"\nusername = \"compound-a-link\"\npassword = \"compound-a-secret\"\nevidence_url = \"http://127.0.0.1:{a_console_port}\"\n\n[[console.staff]]\nusername = \"duty\"\ndisplay_name = \"张警官\"\npassword_hash = \"{DUTY_HASH}\"\nrole = \"admin\"\n"
    );
    let config = site_config(
        &dir.path().join("station"),
        "station-1",
        "street_station",
        station_port,
        &station_body,
    );
    let mut station = Gateway::start(&config, &dir.path().join("station").join("data"));
    let console = station.wait_for_message("gateway ready", Duration::from_secs(30))["console"]
        .as_str()
        .unwrap()
        .to_owned();
    // Compound A watches a square with a camera whose all-day intrusion rule fires on the
    // people walking through the footage.
    let a_body = format!(
        r#"
[[locations.areas]]
id = "square"
name = "广场"
kind = "other"

[[cameras]]
id = "cam-square"
url = "rtsp://127.0.0.1:{camera_port}/cam0"
location = {{ area = "square" }}
analyse_fps = 2
[[cameras.zones]]
id = "all"
polygon = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
[[cameras.rules]]
kind = "intrusion"
zone = "all"
window = {{ from = "00:00", to = "00:00" }}
level = "orange"

[station_link]
host = "127.0.0.1"
port = {station_port}
username = "compound-a-link"
password = "compound-a-secret"
keep_alive_s = 5
"#
    );
    let a_dir = dir.path().join("a");
    let config = site_config_on(
        &a_dir,
        "compound-a",
        "compound",
        (0, a_console_port),
        &a_body,
    );
    let mut a = Gateway::start(&config, &a_dir.join("data"));
    a.wait_ready();
    let cookie = login(&console);
    let intrusion = e2e::eventually(
        Duration::from_secs(90),
        "A's intrusion alert with its snapshot at the station",
        || {
            station_alerts(&console, &cookie)
                .into_iter()
                .find(|e| e["kind"] == "intrusion" && e["readings"]["snapshot"].is_string())
                .ok_or_else(|| "not yet".to_owned())
        },
    )
    .await;
    let id = intrusion["id"].as_str().unwrap();

    // The station console shows it: fetched from A when asked, a JPEG.
    let r = http::request(
        &console,
        "GET",
        &format!("/api/compounds/alerts/{id}/snapshot"),
        &[&cookie],
        "",
    );
    assert_eq!(r.status, 200, "{}", &r.raw[..r.raw.len().min(300)]);
    assert_eq!(r.header("content-type"), Some("image/jpeg"));
    let jpeg = raw_body(
        &console,
        &format!("/api/compounds/alerts/{id}/snapshot"),
        &cookie,
    );
    assert!(jpeg.len() > 1000, "{} bytes", jpeg.len());
    assert_eq!(&jpeg[..3], [0xFF, 0xD8, 0xFF], "a JPEG");
    // Nothing was copied to the station.
    let station_evidence = dir.path().join("station").join("data").join("evidence");
    let copied = std::fs::read_dir(&station_evidence)
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(copied, 0, "no evidence stored at the station");
    // Not without the staff session at the station, and not from A without its login.
    let anonymous = http::request(
        &console,
        "GET",
        &format!("/api/compounds/alerts/{id}/snapshot"),
        &[],
        "",
    );
    assert_eq!(anonymous.status, 401);
    let a_console = format!("127.0.0.1:{a_console_port}");
    let path = format!("/station/alerts/{id}/snapshot");
    assert_eq!(http::request(&a_console, "GET", &path, &[], "").status, 401);
    let wrong = "Authorization: Basic Y29tcG91bmQtYS1saW5rOndyb25n"; // compound-a-link:wrong
    assert_eq!(
        http::request(&a_console, "GET", &path, &[wrong], "").status,
        401
    );
    station.drain_log();
}

/// The body of `GET path` as bytes (the text helper would mangle a JPEG).
fn raw_body(addr: &str, path: &str, cookie: &str) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{cookie}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let at = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    all.split_off(at)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compound_that_dies_is_a_compound_offline_fault_at_the_station_and_clears_when_it_returns(
) {
    let dir = tempfile::tempdir().unwrap();
    let station_port = free_port();
    let station_body = format!(
        "[[compounds]]\nid = \"compound-a\"\nname = \"幸福里小区\"\nusername = \"compound-a-link\"\npassword = \"compound-a-secret\"\noffline_after_s = 30\n\n[[console.staff]]\nusername = \"duty\"\ndisplay_name = \"张警官\"\npassword_hash = \"{DUTY_HASH}\"\nrole = \"admin\"\n"
    );
    let config = site_config(
        &dir.path().join("station"),
        "station-1",
        "street_station",
        station_port,
        &station_body,
    );
    let mut station = Gateway::start(&config, &dir.path().join("station").join("data"));
    let console = station.wait_for_message("gateway ready", Duration::from_secs(30))["console"]
        .as_str()
        .unwrap()
        .to_owned();
    let a_body = format!(
        "[station_link]\nhost = \"127.0.0.1\"\nport = {station_port}\nusername = \"compound-a-link\"\npassword = \"compound-a-secret\"\nkeep_alive_s = 5\n\n[station_link.outbox]\nretry_backoff_max_s = 1\n"
    );
    let a_dir = dir.path().join("a");
    let a_config = site_config(&a_dir, "compound-a", "compound", 0, &a_body);
    let mut a = Gateway::start(&a_config, &a_dir.join("data"));
    a.wait_ready();
    let cookie = login(&console);
    let tile = || {
        let r = http::request(&console, "GET", "/api/compounds", &[&cookie], "");
        let v: Value = serde_json::from_str(r.body()).unwrap_or(Value::Null);
        v["compounds"][0].clone()
    };
    e2e::eventually(WAIT, "A's heartbeat at the station", || {
        let t = tile();
        t["last_heartbeat"]
            .is_string()
            .then_some(())
            .ok_or(t.to_string())
    })
    .await;
    let offline_alert = || {
        let r = http::request(&console, "GET", "/api/alerts", &[&cookie], "");
        let v: Value = serde_json::from_str(r.body()).unwrap_or(Value::Null);
        v.as_array()
            .into_iter()
            .flatten()
            .find(|a| a["kind"] == "compound_offline")
            .cloned()
    };

    // The compound's box loses power.
    a.signal(libc::SIGKILL);
    let died = Instant::now();
    let alert = e2e::eventually(
        Duration::from_secs(60),
        "compound_offline at the station",
        || {
            offline_alert()
                .filter(|a| a["state"] != "resolved")
                .ok_or_else(|| "not yet".to_owned())
        },
    )
    .await;
    let after = died.elapsed();
    eprintln!("compound killed → compound_offline: {after:?}");
    assert!(
        after < Duration::from_secs(45),
        "a fault within the limit and a tick: {after:?}"
    );
    assert_eq!(alert["level"], "orange");
    assert_eq!(alert["location"]["label"], "幸福里小区");
    assert_eq!(tile()["link"], "offline");

    // Back: its first heartbeat resolves the fault.
    let mut a = Gateway::start(&a_config, &a_dir.join("data"));
    a.wait_ready();
    e2e::eventually(WAIT, "compound_offline resolved", || {
        offline_alert()
            .filter(|a| a["state"] == "resolved")
            .ok_or_else(|| "not yet".to_owned())
    })
    .await;
    assert_eq!(tile()["link"], "online");
    station.drain_log();
}
