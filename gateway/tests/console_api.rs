//! The station console and the resident pages, in process: the real pipeline (embedded
//! broker on 127.0.0.1:0, rules, alert task, SQLite) with the console on 127.0.0.1:0, driven
//! over plain HTTP/1.1 on loopback and real MQTT.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::console::{self, api::API_ROUTES, ConsoleDeps};
use gateway::residents;
use gateway::shutdown::Lifecycle;
use gateway::topology::{self, Running};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const DEMO_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2hvdXdhbmctZGVtby1zYQ$pMAMAJaZaTelU1nfxz3/8UfuGG6UrIxQfDFnKLoYXNk";
const PASSWORD: &str = "shouwang-demo";

fn config_text() -> String {
    format!(
        r#"
[site]
id = "console-test"
name = "Console test"
kind = "compound"
[broker]
bind = "127.0.0.1:0"
[[broker.readers]]
username = "resident-display"
password = "display-secret"
topics = ["residents/#"]
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
id = "u1"
name = "1单元"
[[locations.buildings.units]]
id = "u3"
name = "3单元"
[rules.timing]
debounce_s = 0
clear_hold_s = 1
[[devices]]
id = "b1-smoke"
kind = "smoke"
location = {{ building = "b1", unit = "u1", floor = 3, room = "301" }}
[[devices]]
id = "b2-u3-gas"
kind = "gas"
location = {{ building = "b2", unit = "u3", floor = 5, room = "501" }}
[console]
bind = "127.0.0.1:0"
lockout_after_failures = 3
[[console.staff]]
username = "duty"
display_name = "值班员 (Duty officer)"
password_hash = "{DEMO_HASH}"
role = "admin"
"#
    )
}

struct Site {
    _dir: tempfile::TempDir,
    data: PathBuf,
    db: PathBuf,
    config: Arc<edge_config::Config>,
    life: Lifecycle,
    running: Option<Running>,
    broker: SocketAddr,
    console: SocketAddr,
    _conn: rusqlite::Connection,
}

impl Site {
    async fn start() -> Site {
        Self::start_seeded(|_| {}).await
    }

    /// Starts the site on a database that `seed` filled first (as a gateway restarted on
    /// the alerts of an earlier run).
    async fn start_seeded(seed: impl FnOnce(&Path)) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, config_text()).unwrap();
        let config = Arc::new(edge_config::load(&path).unwrap());
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let db = data.join(gateway::db::FILE_NAME);
        let conn = gateway::db::open(&db).unwrap();
        seed(&db);
        let life = Lifecycle::new();
        let running = topology::start(config.clone(), &db, &life).unwrap();
        let broker = running.broker_addr.unwrap();
        let (_reload, live) = tokio::sync::watch::channel(config.clone());
        residents::spawn_publisher(
            live.clone(),
            running.internal_options.clone(),
            running.events.subscribe(),
            &life,
        );
        let handle = console::spawn(
            ConsoleDeps {
                config: config.clone(),
                data_dir: data.clone(),
                alert_inputs: running.alert_inputs.clone(),
                events: Arc::new(running.events.subscribe()),
                uplink: running.uplink.clone(),
                cameras: Default::default(),
                board: running.device_board.clone(),
                ingest: running.ingest_stats.clone(),
                alert_store: running.alert_stats.clone(),
                health: Some(running.health.clone()),
                reserve: running.reserve.clone(),
            },
            live,
            &life,
        )
        .unwrap();
        Site {
            _dir: dir,
            data,
            db,
            config,
            life,
            running: Some(running),
            broker,
            console: handle.local_addr,
            _conn: conn,
        }
    }

    async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            let Running {
                broker,
                alert_inputs,
                events,
                ..
            } = running;
            drop((alert_inputs, events));
            let report = self.life.shutdown(Duration::from_secs(4)).await;
            drop(broker);
            assert!(
                report.clean(),
                "stages still running: {:?}",
                report.timed_out
            );
        }
    }

    async fn login(&self) -> String {
        let r = http(
            self.console,
            "POST",
            "/login",
            None,
            Some((
                "application/json",
                &format!(r#"{{"username":"duty","password":"{PASSWORD}"}}"#),
            )),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let cookie = r.header("set-cookie").expect("a session cookie");
        cookie.split(';').next().unwrap().to_owned()
    }

    async fn sensor(&self, id: &str) -> AsyncClient {
        mqtt(self.broker, id, None, None).await.0
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

fn request(method: &str, path: &str, cookie: Option<&str>, body: Option<(&str, &str)>) -> String {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if let Some(c) = cookie {
        req.push_str(&format!("Cookie: {c}\r\n"));
    }
    let (ctype, body) = body.unwrap_or(("text/plain", ""));
    req.push_str(&format!(
        "Content-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    req
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    body: Option<(&str, &str)>,
) -> Response {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request(method, path, cookie, body).as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// An open SSE stream; `until` reads until the accumulated text satisfies a predicate.
struct Sse {
    stream: TcpStream,
    seen: String,
}

impl Sse {
    async fn open(addr: SocketAddr, path: &str, cookie: Option<&str>) -> Sse {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(request("GET", path, cookie, None).as_bytes())
            .await
            .unwrap();
        let mut sse = Sse {
            stream,
            seen: String::new(),
        };
        assert!(
            sse.until(Duration::from_secs(5), |s| s.contains("event: hello"))
                .await,
            "no hello on {path}: {}",
            sse.seen
        );
        sse
    }

    async fn until(&mut self, wait: Duration, done: impl Fn(&str) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        let mut buf = [0u8; 8192];
        while !done(&self.seen) {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => self.seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                _ => return false,
            }
        }
        true
    }

    /// The JSON `data:` of the first event of `name` whose data contains `needle`.
    fn data(&self, name: &str, needle: &str) -> Option<Value> {
        let mut event = "";
        for line in self.seen.lines() {
            if let Some(e) = line.strip_prefix("event: ") {
                event = e;
            } else if let Some(d) = line.strip_prefix("data: ") {
                if event == name && d.contains(needle) {
                    return serde_json::from_str(d).ok();
                }
            }
        }
        None
    }
}

async fn mqtt(
    broker: SocketAddr,
    id: &str,
    login: Option<(&str, &str)>,
    subscribe: Option<&str>,
) -> (AsyncClient, mpsc::UnboundedReceiver<(String, Vec<u8>)>) {
    let mut o = MqttOptions::new(id, broker.ip().to_string(), broker.port());
    if let Some((user, password)) = login {
        o.set_credentials(user, password);
    }
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(o, 64);
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut ready = Some(ready_tx);
    let filter = subscribe.map(str::to_owned);
    let c = client.clone();
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(f) = &filter {
                        c.subscribe(f.clone(), QoS::AtLeastOnce).await.unwrap();
                    } else if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(5), ready_rx)
        .await
        .expect("MQTT connected in time")
        .unwrap();
    (client, rx)
}

fn concrete(path: &str) -> String {
    path.replace("{id}", "01KAV7Q2XK4T5J0ZC3M8W6E1PB")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_route_refuses_requests_without_a_session() {
    let site = Site::start().await;
    assert!(API_ROUTES.len() >= 15, "the route list is complete");
    for (method, path) in API_ROUTES {
        for cookie in [None, Some("sw_session=0123456789abcdef")] {
            let r = http(site.console, method, &concrete(path), cookie, None).await;
            assert_eq!(r.status, 401, "{method} {path} with {cookie:?}: {}", r.body);
        }
    }
    // The console page sends a stranger to the login page; the open routes stay open.
    let page = http(site.console, "GET", "/", None, None).await;
    assert_eq!(
        (page.status, page.header("location")),
        (303, Some("/login"))
    );
    assert_eq!(
        http(site.console, "GET", "/healthz", None, None)
            .await
            .status,
        200
    );
    assert_eq!(
        http(site.console, "GET", "/login", None, None).await.status,
        200
    );
    // And with a session every GET route answers.
    let cookie = site.login().await;
    for (method, path) in API_ROUTES
        .iter()
        .filter(|(m, p)| *m == "GET" && !p.contains("{id}") && !p.ends_with("/events"))
    {
        let r = http(site.console, method, path, Some(&cookie), None).await;
        assert_eq!(r.status, 200, "{method} {path}: {}", r.body);
    }
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_password_logs_in_with_a_strict_http_only_cookie_and_a_wrong_one_does_not() {
    let site = Site::start().await;
    let form = http(
        site.console,
        "POST",
        "/login",
        None,
        Some((
            "application/x-www-form-urlencoded",
            "username=duty&password=shouwang-demo",
        )),
    )
    .await;
    assert_eq!(form.status, 303);
    let cookie = form.header("set-cookie").unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap();
    let me = http(site.console, "GET", "/api/me", Some(session), None).await;
    assert_eq!(me.json()["username"], "duty");
    let page = http(site.console, "GET", "/", Some(session), None).await;
    assert!(page.status == 200 && page.body.contains("EventSource"));

    let wrong = http(
        site.console,
        "POST",
        "/login",
        None,
        Some((
            "application/json",
            r#"{"username":"duty","password":"nope"}"#,
        )),
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());

    let out = http(site.console, "POST", "/logout", Some(session), None).await;
    assert_eq!(out.status, 204);
    let after = http(site.console, "GET", "/api/me", Some(session), None).await;
    assert_eq!(after.status, 401, "a logged-out session is dead");
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_from_one_address_throttle_it_even_for_the_right_password() {
    let site = Site::start().await;
    let attempt = |password: &'static str| {
        let body = format!(r#"{{"username":"duty","password":"{password}"}}"#);
        async move {
            http(
                site.console,
                "POST",
                "/login",
                None,
                Some(("application/json", &body)),
            )
            .await
        }
    };
    assert_eq!(attempt("bad-1").await.status, 401);
    assert_eq!(attempt("bad-2").await.status, 401);
    let third = attempt("bad-3").await;
    assert_eq!(third.status, 429);
    assert!(third.header("retry-after").is_some());
    let right = attempt(PASSWORD).await;
    assert_eq!(
        right.status, 429,
        "throttled means throttled, from this address: {}",
        right.body
    );
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensor_alert_reaches_the_live_feed_within_a_second_and_its_acknowledgement_is_stored_and_queued_upstream(
) {
    let site = Site::start().await;
    let cookie = site.login().await;
    let mut feed = Sse::open(site.console, "/api/events", Some(&cookie)).await;
    let sensor = site.sensor("b1-smoke").await;
    let sent = Instant::now();
    sensor
        .publish(
            "sensors/b1-smoke/state",
            QoS::AtLeastOnce,
            false,
            r#"{"smoke":true,"battery_pct":90}"#,
        )
        .await
        .unwrap();
    let arrived = feed
        .until(Duration::from_secs(5), |s| {
            s.contains("event: alert") && s.contains(r#""kind":"smoke""#)
        })
        .await;
    let latency = sent.elapsed();
    assert!(arrived, "no smoke alert on the feed: {}", feed.seen);
    assert!(
        latency < Duration::from_secs(1),
        "live feed took {latency:?}"
    );
    let alert = feed.data("alert", r#""kind":"smoke""#).unwrap();
    let id = alert["id"].as_str().unwrap().to_owned();
    assert_eq!(alert["level"], "red");
    assert_eq!(alert["location"]["building"], "b1");

    let listed = http(
        site.console,
        "GET",
        "/api/alerts?state=active&kind=smoke&building=b1",
        Some(&cookie),
        None,
    )
    .await;
    assert_eq!(listed.json()[0]["id"], id.as_str());
    let other = http(
        site.console,
        "GET",
        "/api/alerts?building=b2",
        Some(&cookie),
        None,
    )
    .await;
    assert_eq!(other.json().as_array().map(Vec::len), Some(0));

    let ack = http(
        site.console,
        "POST",
        &format!("/api/alerts/{id}/ack"),
        Some(&cookie),
        None,
    )
    .await;
    assert_eq!(ack.status, 200, "{}", ack.body);
    let acked = ack.json();
    assert_eq!(acked["state"], "acknowledged");
    assert_eq!(acked["acknowledged_by"], "duty");
    assert!(
        feed.until(Duration::from_secs(2), |s| s
            .contains(r#""event":"acknowledged""#))
            .await,
        "the acknowledgement is broadcast on the feed too"
    );

    let stored = http(
        site.console,
        "GET",
        &format!("/api/alerts/{id}"),
        Some(&cookie),
        None,
    )
    .await;
    assert_eq!(stored.json()["acknowledged_by"], "duty");
    let conn = rusqlite::Connection::open(&site.db).unwrap();
    let queued: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM outbox WHERE stream = 0 AND json_extract(payload, '$.id') = ?1
             AND json_extract(payload, '$.event') = 'acknowledged'
             AND json_extract(payload, '$.acknowledged_by') = 'duty'",
            [&id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        queued, 1,
        "the acknowledgement waits in the outbox for the platform"
    );

    let missing = http(
        site.console,
        "POST",
        "/api/alerts/nope/ack",
        Some(&cookie),
        None,
    )
    .await;
    assert_eq!(missing.status, 404);
    let resolved = http(
        site.console,
        "POST",
        &format!("/api/alerts/{id}/resolve"),
        Some(&cookie),
        None,
    )
    .await;
    assert_eq!(resolved.json()["resolved_by"], "duty");
    let again = http(
        site.console,
        "POST",
        &format!("/api/alerts/{id}/ack"),
        Some(&cookie),
        None,
    )
    .await;
    assert_eq!(again.status, 409, "a resolved alert cannot be acknowledged");
    let times = http(
        site.console,
        "GET",
        "/api/stats/response-times",
        Some(&cookie),
        None,
    )
    .await;
    assert_eq!(times.json()["last_24h"]["smoke"]["acknowledge"]["count"], 1);
    // One garbled message from the detector: counted against it on the devices panel.
    sensor
        .publish(
            "sensors/b1-smoke/state",
            QoS::AtLeastOnce,
            false,
            "{garbled",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let devices = http(site.console, "GET", "/api/devices", Some(&cookie), None).await;
    let smoke = devices.json()["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == "b1-smoke")
        .cloned()
        .unwrap();
    assert_eq!(smoke["status"], "online");
    assert_eq!(smoke["battery_pct"], 90.0);
    assert_eq!(smoke["rejected"], 1, "{smoke}");
    // A healthy database: no banner.
    let health = http(site.console, "GET", "/api/health", Some(&cookie), None).await;
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(
        health.json()["alert_store"]["deferred"],
        0,
        "{}",
        health.body
    );
    assert_eq!(health.json()["alert_store"]["failures_total"], 0);
    assert_eq!(
        health.json()["faults"],
        serde_json::json!([]),
        "no stage faulted"
    );
    site.stop().await;
}

fn unit_links(db: &Path) -> (String, String) {
    let issued = residents::links::issue(
        db,
        &[("b2".into(), "u3".into()), ("b2".into(), "u1".into())],
    )
    .unwrap();
    (issued[0].token.clone(), issued[1].token.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gas_alert_in_building_2_unit_3_reaches_that_units_page_and_topic_in_both_languages() {
    let site = Site::start().await;
    let (b2u3, b2u1) = unit_links(&site.db);
    // Resident notices are readable only by a login granted them (a reader).
    let display = Some(("resident-display", "display-secret"));
    let (_watch, mut notices) =
        mqtt(site.broker, "resident-watch", display, Some("residents/#")).await;
    let mut page = Sse::open(site.console, &format!("/r/{b2u3}/events"), None).await;
    let sensor = site.sensor("b2-u3-gas").await;
    sensor
        .publish(
            "sensors/b2-u3-gas/state",
            QoS::AtLeastOnce,
            false,
            r#"{"gas_lel_pct":31.0}"#,
        )
        .await
        .unwrap();

    let mut topics = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while topics.len() < 2 {
        let Ok(Some((topic, payload))) = tokio::time::timeout_at(deadline, notices.recv()).await
        else {
            break;
        };
        let n: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(n["kind"], "gas");
        assert_eq!(n["status"], "active");
        assert!(
            n["message"]["zh-CN"].as_str().unwrap().contains("燃气"),
            "{n}"
        );
        assert!(n["message"]["en"].as_str().unwrap().contains("gas"), "{n}");
        assert!(!n["advice"]["zh-CN"].as_str().unwrap().is_empty());
        assert!(!n["advice"]["en"].as_str().unwrap().is_empty());
        topics.push(topic);
    }
    topics.sort();
    assert_eq!(topics, ["residents/b2/all", "residents/b2/u3/alerts"]);

    assert!(
        page.until(Duration::from_secs(3), |s| s.contains("event: notice"))
            .await,
        "the unit's page got the notice live: {}",
        page.seen
    );
    let shown = http(
        site.console,
        "GET",
        &format!("/r/{b2u3}/alerts"),
        None,
        None,
    )
    .await;
    let shown = shown.json();
    assert_eq!(shown["alerts"][0]["kind"], "gas");
    assert!(shown["unit"].as_str().unwrap().contains("3单元"));
    let html = http(site.console, "GET", &format!("/r/{b2u3}"), None, None).await;
    assert!(html.status == 200 && html.body.contains("EventSource"));
    // Unit 1 of the same building is warned too (gas is building-wide).
    let neighbour = http(
        site.console,
        "GET",
        &format!("/r/{b2u1}/alerts"),
        None,
        None,
    )
    .await;
    assert_eq!(neighbour.json()["alerts"][0]["kind"], "gas");
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unit_a_link_cannot_read_unit_b_alerts_and_a_rotated_link_stops_working() {
    let site = Site::start().await;
    let issued = residents::links::issue(
        &site.db,
        &[("b1".into(), "u1".into()), ("b2".into(), "u3".into())],
    )
    .unwrap();
    let (b1u1, b2u3) = (issued[0].token.clone(), issued[1].token.clone());
    let mut a_page = Sse::open(site.console, &format!("/r/{b1u1}/events"), None).await;
    let sensor = site.sensor("b2-u3-gas").await;
    sensor
        .publish(
            "sensors/b2-u3-gas/state",
            QoS::AtLeastOnce,
            false,
            r#"{"gas_lel_pct":31.0}"#,
        )
        .await
        .unwrap();
    let b_view = async {
        for _ in 0..50 {
            let r = http(
                site.console,
                "GET",
                &format!("/r/{b2u3}/alerts"),
                None,
                None,
            )
            .await;
            if r.json()["alerts"].as_array().is_some_and(|a| !a.is_empty()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    assert!(b_view.await, "unit B sees its own gas alert");
    let a = http(
        site.console,
        "GET",
        &format!("/r/{b1u1}/alerts"),
        None,
        None,
    )
    .await;
    assert_eq!(
        a.json()["alerts"],
        serde_json::json!([]),
        "unit A sees nothing of unit B"
    );
    assert!(
        !a_page
            .until(Duration::from_millis(800), |s| s.contains("event: notice"))
            .await,
        "unit A's live page got B's alert: {}",
        a_page.seen
    );
    // A made-up token opens nothing.
    let guess = http(
        site.console,
        "GET",
        &format!("/r/{}/alerts", "0".repeat(64)),
        None,
        None,
    )
    .await;
    assert_eq!(guess.status, 404);

    let rotated = residents::links::issue(&site.db, &[("b2".into(), "u3".into())]).unwrap();
    for path in ["", "/alerts", "/events"] {
        let old = http(site.console, "GET", &format!("/r/{b2u3}{path}"), None, None).await;
        assert_eq!(old.status, 404, "rotated link still opens {path}");
    }
    let new = http(
        site.console,
        "GET",
        &format!("/r/{}/alerts", rotated[0].token),
        None,
        None,
    )
    .await;
    assert_eq!(new.json()["alerts"][0]["kind"], "gas");
    let _ = (&site.data, &site.config);
    site.stop().await;
}

/// Polls `GET path` until `done` holds for its JSON, or fails after 10 s.
async fn poll_json(
    site: &Site,
    path: &str,
    cookie: Option<&str>,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = http(site.console, "GET", path, cookie, None).await;
        let v = r.json();
        if done(&v) {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{path}: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staff_action_on_an_unknown_alert_is_404_on_a_resolved_one_409_and_on_a_refusing_database_503(
) {
    let site = Site::start().await;
    let cookie = site.login().await;
    let sensor = site.sensor("b1-smoke").await;
    sensor
        .publish(
            "sensors/b1-smoke/state",
            QoS::AtLeastOnce,
            false,
            r#"{"smoke":true}"#,
        )
        .await
        .unwrap();
    let listed = poll_json(
        &site,
        "/api/alerts?state=active&kind=smoke",
        Some(&cookie),
        |v| v.as_array().is_some_and(|a| !a.is_empty()),
    )
    .await;
    let id = listed[0]["id"].as_str().unwrap().to_owned();
    let post = |path: String| {
        let cookie = cookie.clone();
        async move { http(site.console, "POST", &path, Some(&cookie), None).await }
    };

    let unknown = post("/api/alerts/01KAV7Q2XK4T5J0ZC3M8W6E1PB/ack".into()).await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    let unknown = post("/api/alerts/01KAV7Q2XK4T5J0ZC3M8W6E1PB/resolve".into()).await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);

    // The database refuses every new alert event (as a full or failing disk would).
    let conn = rusqlite::Connection::open(&site.db).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER refuse_events BEFORE INSERT ON alert_events
         BEGIN SELECT RAISE(ABORT, 'simulated storage fault'); END;",
    )
    .unwrap();
    let refused = post(format!("/api/alerts/{id}/resolve")).await;
    assert_eq!(
        refused.status, 503,
        "a storage fault is not a conflict: {}",
        refused.body
    );
    assert!(refused.body.contains("storage fault"), "{}", refused.body);
    let refused = post(format!("/api/alerts/{id}/ack")).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    let still = http(
        site.console,
        "GET",
        &format!("/api/alerts/{id}"),
        Some(&cookie),
        None,
    )
    .await;
    assert_eq!(still.json()["state"], "raised", "nothing was recorded");

    conn.execute_batch("DROP TRIGGER refuse_events").unwrap();
    let resolved = post(format!("/api/alerts/{id}/resolve")).await;
    assert_eq!(resolved.status, 200, "{}", resolved.body);
    let again = post(format!("/api/alerts/{id}/resolve")).await;
    assert_eq!(again.status, 409, "{}", again.body);
    let ack = post(format!("/api/alerts/{id}/ack")).await;
    assert_eq!(ack.status, 409, "{}", ack.body);
    site.stop().await;
}

/// An active alert of `source`/`kind` at `building`/`unit`, raised at `raised_at`.
fn seeded_alert(
    source: &str,
    kind: &str,
    building: &str,
    unit: &str,
    raised_at: &str,
) -> gateway::alerts::Alert {
    serde_json::from_value(serde_json::json!({
        "id": ulid::Ulid::generate().to_string(), "seq": 0, "event": "raised", "site": "console-test",
        "kind": kind, "level": "red", "state": "raised",
        "source": { "type": "device", "id": source },
        "location": { "building": building, "unit": unit, "label": format!("{building} {unit}") },
        "raised_at": raised_at, "updated_at": raised_at,
        "readings": {}, "message": { "zh-CN": "z", "en": "e" }, "advice": { "zh-CN": "z", "en": "e" }
    }))
    .unwrap()
}

/// Seeds an old active gas alert of `b2-u3-gas` (b2/u3) and 600 newer active water leaks of
/// other devices in b1; returns the gas alert's id.
fn seed_old_gas_and_many_newer(db: &Path) -> String {
    let mut store = gateway::alerts::AlertStore::open(db).unwrap();
    let mut gas = seeded_alert("b2-u3-gas", "gas", "b2", "u3", "2026-01-01T00:00:00.000Z");
    store
        .record(&mut gas, gateway::alerts::EventKind::Raised)
        .unwrap();
    for i in 0..600 {
        let at = format!("2026-01-02T00:{:02}:{:02}.000Z", i / 60, i % 60);
        let mut leak = seeded_alert(&format!("b1-leak-{i}"), "water_leak", "b1", "u1", &at);
        store
            .record(&mut leak, gateway::alerts::EventKind::Raised)
            .unwrap();
    }
    gas.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_active_alert_stays_on_the_resident_page_after_many_newer_ones() {
    let mut gas = String::new();
    let site = Site::start_seeded(|db| gas = seed_old_gas_and_many_newer(db)).await;
    let (b2u3, b2u1) = unit_links(&site.db);
    for token in [b2u3, b2u1] {
        let page = http(
            site.console,
            "GET",
            &format!("/r/{token}/alerts"),
            None,
            None,
        )
        .await;
        assert_eq!(page.status, 200, "{}", page.body);
        let ids: Vec<_> = page.json()["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            ids,
            [gas.clone()],
            "the old gas alert of b2/u3 is still shown"
        );
    }
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_active_alert_stays_on_the_devices_panel_after_many_newer_ones() {
    let site = Site::start_seeded(|db| {
        seed_old_gas_and_many_newer(db);
    })
    .await;
    let cookie = site.login().await;
    let devices = http(site.console, "GET", "/api/devices", Some(&cookie), None).await;
    assert_eq!(devices.status, 200, "{}", devices.body);
    let gas = devices.json()["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == "b2-u3-gas")
        .cloned()
        .unwrap();
    assert_eq!(
        gas["active_alerts"],
        serde_json::json!(["gas:red"]),
        "{gas}"
    );
    site.stop().await;
}
