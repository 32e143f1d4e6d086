//! A hostile LAN against the real `gateway` binary's embedded broker (issue 12): idle
//! sockets, anonymous floods, a leaked device login, devices speaking for other devices or
//! for the gateway, retained-message floods, a broker left open to the network.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::mqtt::Mqtt;
use e2e::Gateway;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::{self, pki_types::ServerName};

const WAIT: Duration = Duration::from_secs(15);

/// Devices with logins, two read-only logins, a gas linkage closing the valve.
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
actuator_confirm_s = 3

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
id = "b1-valve"
kind = "valve"
location = { building = "b1", unit = "u1", floor = 5, room = "501" }
username = "b1-valve"
password = "valve-secret"
[[rules.linkage]]
on = "gas"
min_level = "orange"
action = "close_valve"
targets = ["b1-valve"]
"#;

/// A gateway on loopback; `broker` goes into its `[broker]` table, `body` after it.
struct Site {
    _dir: tempfile::TempDir,
    gateway: Gateway,
    broker: SocketAddr,
    tls: Option<SocketAddr>,
}

impl Site {
    fn start(broker: &str, body: &str) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let config = write_site(dir.path(), broker, body);
        let mut gateway = Gateway::start(&config, &dir.path().join("data"));
        let listening = gateway.wait_for_message("embedded MQTT broker listening", WAIT);
        let tls = listening["tls_addr"].as_str().and_then(|a| a.parse().ok());
        let broker = gateway.wait_ready();
        Site {
            _dir: dir,
            gateway,
            broker,
            tls,
        }
    }

    async fn client(&self, id: &str, user: &str, password: &str) -> Mqtt {
        let mut o = MqttOptions::new(id, self.broker.ip().to_string(), self.broker.port());
        if !user.is_empty() {
            o.set_credentials(user, password);
        }
        Mqtt::connect_with(o).await
    }

    /// The alert board (a reader of `shouwang/#`) watching this site's alerts.
    async fn alert_board(&self, id: &str) -> Mqtt {
        let w = self.client(id, "alert-board", "board-secret").await;
        w.subscribe("shouwang/test-site/alerts/#").await;
        w
    }
}

fn write_site(dir: &Path, broker: &str, body: &str) -> PathBuf {
    let text = format!(
        "[site]\nid = \"test-site\"\nname = \"Test\"\nkind = \"compound\"\n\n[broker]\n\
         bind = \"127.0.0.1:0\"\n{broker}\n\n[console]\nbind = \"127.0.0.1:0\"\n\n{body}\n"
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Every message up to and including the first whose JSON satisfies `pred` (panics if it
/// does not come within [`WAIT`]).
async fn until(client: &mut Mqtt, pred: impl Fn(&Value) -> bool) -> Vec<e2e::mqtt::Message> {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = client
            .next(left)
            .await
            .unwrap_or_else(|| panic!("nothing matching within {WAIT:?}; saw {seen:?}"));
        let done = pred(&m.json());
        seen.push(m);
        if done {
            return seen;
        }
    }
}

/// Topic and payload of each message, for failure messages.
fn shown(messages: &[e2e::mqtt::Message]) -> Vec<(String, String)> {
    messages
        .iter()
        .map(|m| {
            (
                m.topic.clone(),
                String::from_utf8_lossy(&m.payload).into_owned(),
            )
        })
        .collect()
}

fn is(kind: &'static str, event: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["kind"] == kind && v["event"] == event
}

/// An MQTT 3.1.1 CONNECT (clean session, keep-alive 60 s), written by hand.
fn connect_packet(client_id: &str, login: Option<(&str, &str)>) -> Vec<u8> {
    let mut body = mqtt_str("MQTT");
    body.push(4);
    body.push(0x02 | if login.is_some() { 0xC0 } else { 0 });
    body.extend_from_slice(&60u16.to_be_bytes());
    body.extend(mqtt_str(client_id));
    if let Some((user, password)) = login {
        body.extend(mqtt_str(user));
        body.extend(mqtt_str(password));
    }
    packet(0x10, &body)
}

/// A QoS 0 PUBLISH.
fn publish_packet(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = mqtt_str(topic);
    body.extend_from_slice(payload);
    packet(0x30, &body)
}

fn packet(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![kind];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        p.push(byte);
        if len == 0 {
            break;
        }
    }
    p.extend_from_slice(body);
    p
}

fn mqtt_str(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

/// Throwaway CA and a server certificate for 127.0.0.1/localhost in `dir`.
fn throwaway_pki(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
}

fn tls_connector(ca_pem: &Path) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(ca_pem).unwrap();
    for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_sensor_connects_within_a_second_while_an_idle_socket_holds_the_tls_port() {
    let pki = tempfile::tempdir().unwrap();
    throwaway_pki(pki.path());
    let tls = format!(
        "require_auth = true\ntls = {{ cert = \"{}\", key = \"{}\", bind = \"127.0.0.1:0\" }}",
        pki.path().join("server.pem").display(),
        pki.path().join("server.key").display()
    );
    let site = Site::start(&tls, SITE);
    let tls_addr = site.tls.expect("the TLS listener's address is logged");
    let mut board = site.alert_board("board-tls").await;

    // Someone opens the TLS port and says nothing.
    let _idle = TcpStream::connect(tls_addr).unwrap();
    let _idle_too = TcpStream::connect(tls_addr).unwrap();

    let began = Instant::now();
    let tcp = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    let name = ServerName::try_from("localhost".to_owned()).unwrap();
    let mut sensor = tokio::time::timeout(
        Duration::from_secs(10),
        tls_connector(&pki.path().join("ca.pem")).connect(name, tcp),
    )
    .await
    .expect("TLS handshake within 10 s")
    .expect("TLS handshake");
    let login = Some(("b1-smoke", "smoke-secret"));
    sensor
        .write_all(&connect_packet("b1-smoke", login))
        .await
        .unwrap();
    let mut connack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), sensor.read_exact(&mut connack))
        .await
        .expect("CONNACK within 10 s")
        .unwrap();
    let took = began.elapsed();
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK accepted");
    assert!(
        took < Duration::from_secs(1),
        "TLS sensor connected in {took:?}"
    );

    sensor
        .write_all(&publish_packet(
            "sensors/b1-smoke/state",
            br#"{"smoke":true}"#,
        ))
        .await
        .unwrap();
    let raised = board.collect(1, WAIT, is("smoke", "raised")).await;
    assert_eq!(raised.len(), 1, "the TLS sensor's alarm raises an alert");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_cannot_speak_for_another_device_or_for_the_gateway() {
    let site = Site::start("require_auth = true", SITE);
    let mut board = site.alert_board("board-acl").await;
    let mut display = site
        .client("display-b1", "b1-display", "display-secret")
        .await;
    display.subscribe("residents/b1/#").await;
    // A device login reading what is not its own: resident notices and everything.
    let mut spy = site.client("spy", "b1-smoke", "smoke-secret").await;
    spy.subscribe("residents/#").await;
    spy.subscribe("#").await;
    let attacker = site.client("attacker", "b1-smoke", "smoke-secret").await;

    // Another device's reading, a forged alert and a forged all-clear.
    attacker
        .publish("sensors/b1-gas/state", r#"{"gas_lel_pct":60}"#)
        .await;
    attacker
        .publish(
            "shouwang/test-site/alerts/forged",
            r#"{"kind":"smoke","event":"resolved","forged":true}"#,
        )
        .await;
    attacker
        .publish(
            "residents/b1/all",
            r#"{"kind":"gas","status":"resolved","forged":true}"#,
        )
        .await;
    // Its own alarm, after them on the same connection.
    attacker
        .publish("sensors/b1-smoke/state", r#"{"smoke":true}"#)
        .await;
    let before = until(&mut board, is("smoke", "raised")).await;
    assert!(
        before
            .iter()
            .all(|m| m.json()["kind"] != "gas" && !m.topic.ends_with("/forged")),
        "no gas alert and no forged alert from the forged messages: {:?}",
        shown(&before)
    );
    let early = board.drain(Duration::from_secs(1)).await;
    assert!(
        early
            .iter()
            .all(|m| m.json()["kind"] != "gas" && !m.topic.ends_with("/forged")),
        "no gas alert and no forged alert from the forged messages: {:?}",
        shown(&early)
    );

    a_forged_valve_confirmation_is_not_taken(&site, &mut board, &attacker).await;

    let rest = board.drain(Duration::from_secs(2)).await;
    assert!(
        rest.iter().all(|m| !m.topic.ends_with("/forged")),
        "no forged alert reached the board: {:?}",
        shown(&rest)
    );
    let notices = display.drain(Duration::from_secs(1)).await;
    assert!(
        notices
            .iter()
            .all(|m| !m.json()["forged"].as_bool().unwrap_or(false)),
        "no forged all-clear reached the residents: {:?}",
        shown(&notices)
    );
    assert!(
        !notices.is_empty(),
        "the resident display (a reader of residents/b1/#) got the real notices"
    );
    let seen_by_spy = spy.drain(Duration::from_secs(1)).await;
    assert!(
        seen_by_spy.is_empty(),
        "a device login reads nothing but its own command topic: {:?}",
        seen_by_spy.iter().map(|m| &m.topic).collect::<Vec<_>>()
    );
}

/// A real gas alert commands the (offline) valve; `attacker` fakes the valve's confirmation;
/// the action must still time out.
async fn a_forged_valve_confirmation_is_not_taken(site: &Site, board: &mut Mqtt, attacker: &Mqtt) {
    // The real gas detector raises a gas alert; the gateway commands the valve, which is
    // offline; the attacker fakes the valve's confirmation.
    let gas = site.client("b1-gas", "b1-gas", "gas-secret").await;
    gas.publish("sensors/b1-gas/state", r#"{"gas_lel_pct":60}"#)
        .await;
    let gas_raised = board.collect(1, WAIT, is("gas", "raised")).await;
    assert_eq!(gas_raised.len(), 1, "the real gas detector's alert");
    attacker
        .publish("sensors/b1-valve/state", r#"{"state":"closed"}"#)
        .await;
    let outcome = |v: &Value| {
        v["actions"].as_array().and_then(|a| {
            a.iter()
                .find(|x| x["target"] == "b1-valve" && x["outcome"] != "pending")
                .map(|x| x["outcome"].as_str().unwrap_or("").to_owned())
        })
    };
    let settled = board
        .collect(1, WAIT, |v| v["kind"] == "gas" && outcome(v).is_some())
        .await;
    assert_eq!(settled.len(), 1, "the valve action settles");
    assert_eq!(
        outcome(&settled[0]).as_deref(),
        Some("timed_out"),
        "a forged confirmation does not close the valve on paper: {}",
        settled[0]
    );
}

/// Connects a raw MQTT client; `Some(return code)` of its CONNACK, `None` if closed first.
fn raw_connect(addr: SocketAddr, id: &str, login: Option<(&str, &str)>) -> (TcpStream, Option<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&connect_packet(id, login)).unwrap();
    let mut connack = [0u8; 4];
    let code = s.read_exact(&mut connack).ok().map(|()| connack[3]);
    (s, code)
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_and_anonymous_connections_and_a_leaked_login_do_not_keep_a_real_sensor_out() {
    let site = Site::start("require_auth = true", SITE);
    let mut board = site.alert_board("board-slots").await;
    let addr = site.broker;

    let idle: Vec<TcpStream> = (0..80).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let mut anonymous_refused = 0;
    for i in 0..80 {
        let (_s, code) = raw_connect(addr, &format!("anon-{i}"), None);
        if code != Some(0) {
            anonymous_refused += 1;
        }
    }
    assert_eq!(anonymous_refused, 80, "clients without a login are refused");
    // A leaked device login, used for seventy connections that stay.
    let mut leaked = Vec::new();
    for i in 0..70 {
        let (s, code) = raw_connect(addr, &format!("leak-{i}"), Some(("b1-gas", "gas-secret")));
        if code == Some(0) {
            leaked.push(s);
        }
    }
    let began = Instant::now();
    let smoke = site.client("b1-smoke", "b1-smoke", "smoke-secret").await;
    assert!(
        began.elapsed() < Duration::from_secs(1),
        "the real sensor connected in {:?}",
        began.elapsed()
    );
    smoke
        .publish("sensors/b1-smoke/state", r#"{"smoke":true}"#)
        .await;
    let raised = board.collect(1, WAIT, is("smoke", "raised")).await;
    assert_eq!(raised.len(), 1, "the real sensor's alarm raises an alert");
    assert!(
        leaked.len() <= 4,
        "one device login holds a few connections, not {}",
        leaked.len()
    );

    // The sockets that never sent a CONNECT are closed by the gateway.
    let began = Instant::now();
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut byte = [0u8; 1];
        assert!(
            matches!(s.read(&mut byte), Ok(0)),
            "an idle socket is closed"
        );
    }
    assert!(
        began.elapsed() < Duration::from_secs(8),
        "{:?}",
        began.elapsed()
    );
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread")]
async fn retained_publishes_from_clients_are_capped_and_memory_stays_bounded() {
    // Anonymous on loopback (the demo's setting): anyone there may publish sensor topics.
    let site = Site::start(
        "",
        "[[locations.areas]]\nid = \"a\"\nname = \"A\"\nkind = \"lobby\"\n",
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss(site.gateway.pid());

    let mut options = MqttOptions::new("flooder", "127.0.0.1", site.broker.port());
    options.set_max_packet_size(1 << 20, 1 << 20);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(options, 100);
    let total = 1_500;
    let acks = tokio::spawn(async move {
        let mut acked = 0;
        while acked < total {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("flooder connection failed after {acked} acks: {e}"),
            }
        }
    });
    let payload = vec![b'x'; 60 * 1024];
    for i in 0..total {
        client
            .publish(
                format!("sensors/flood-{i}/state"),
                QoS::AtLeastOnce,
                true,
                payload.clone(),
            )
            .await
            .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(120), acks)
        .await
        .expect("every retained publish acknowledged")
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let grown = rss(site.gateway.pid()).saturating_sub(before);
    println!("the gateway grew by {} MB", grown / (1024 * 1024));
    assert!(
        grown < 60 * 1024 * 1024,
        "1,500 retained 60 KB messages grew the gateway by {} MB",
        grown / (1024 * 1024)
    );

    // A late subscriber gets the retained messages that were stored: some, not all.
    let mut late = Mqtt::connect(site.broker, "late").await;
    late.subscribe("sensors/+/state").await;
    let retained = late
        .drain(Duration::from_secs(2))
        .await
        .into_iter()
        .filter(|m| m.retain)
        .count();
    println!("{retained} retained messages kept");
    assert!(
        (1..=100).contains(&retained),
        "{retained} retained messages kept (budget 4 MiB of 60 KB messages)"
    );
}

#[test]
fn config_check_refuses_an_anonymous_broker_on_all_interfaces() {
    let dir = tempfile::tempdir().unwrap();
    let body = "[[locations.areas]]\nid = \"a\"\nname = \"A\"\nkind = \"lobby\"\n\
                [[devices]]\nid = \"s1\"\nkind = \"smoke\"\nlocation = { area = \"a\" }\n";
    let check = |broker: &str| {
        let config = write_site(dir.path(), broker, body);
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace("bind = \"127.0.0.1:0\"\n", "")
            .replacen("[broker]\n", "[broker]\nbind = \"0.0.0.0:18830\"\n", 1);
        std::fs::write(&config, text).unwrap();
        let out = Command::new(e2e::bin("gateway"))
            .args(["config", "check"])
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = check("");
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("broker.bind"), "{stderr}");
    assert!(stderr.contains("allow_anonymous"), "{stderr}");
    let (code, stderr) = check("allow_anonymous = true");
    assert_eq!(code, Some(0), "the risk accepted in writing: {stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_out_of_file_descriptors_neither_floods_its_log_nor_turns_a_sensor_away() {
    let dir = tempfile::tempdir().unwrap();
    let body = "[[locations.areas]]\nid = \"a\"\nname = \"A\"\nkind = \"lobby\"\n\
                [[devices]]\nid = \"s1\"\nkind = \"smoke\"\nlocation = { area = \"a\" }\n";
    let config = write_site(dir.path(), "", body);
    // About 50 descriptors are open once the gateway is up: 100 leaves little room.
    let mut command = Command::new("prlimit");
    command
        .args(["--nofile=100:100", "--"])
        .arg(e2e::bin("gateway"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"));
    let mut gateway = Gateway::spawn(command);
    let broker = gateway.wait_ready();
    let mut board = Mqtt::connect(broker, "board").await;
    board.subscribe("shouwang/test-site/alerts/#").await;
    gateway.drain_log();
    let lines_before = gateway.seen.len();

    // A hundred and fifty idle connections: more than the process has descriptors for.
    let idle: Vec<TcpStream> = (0..150)
        .filter_map(|_| TcpStream::connect(broker).ok())
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    gateway.drain_log();
    let logged = gateway.seen.len() - lines_before;
    assert!(
        logged < 100,
        "{logged} log lines in 2 s under descriptor pressure; the last ones:\n{}",
        gateway.seen[gateway.seen.len().saturating_sub(5)..].join("\n")
    );

    let sensor = Mqtt::connect(broker, "s1").await;
    sensor
        .publish("sensors/s1/state", r#"{"smoke":true}"#)
        .await;
    let raised = board.collect(1, WAIT, is("smoke", "raised")).await;
    assert_eq!(
        raised.len(),
        1,
        "a sensor still gets in and its alarm through"
    );
    drop(idle);
}
