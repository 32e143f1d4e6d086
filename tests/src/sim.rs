//! Helpers for the simulator scenarios: a gateway on a test configuration, the simulators
//! pointed at its embedded broker, and the alert events it published meanwhile.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use simulators::mqtt::Endpoint;
use simulators::process::{self, ChildGuard};
use simulators::sensors::{self, Options, Report, Scenario};
use tokio_util::sync::CancellationToken;

use crate::mqtt::Mqtt;
use crate::{bin, workspace_root, write_config, Gateway};

/// Places every scenario's devices can refer to, and rule timings short enough for tests:
/// no debounce beyond 1 s, 1 s clear hold, rate windows of 10 s, escalation out of reach.
pub const SITE: &str = r#"
[[locations.buildings]]
id = "b1"
name = "1号楼"
floors = 18
[[locations.buildings.units]]
id = "u1"
name = "1单元"
[[locations.areas]]
id = "shed"
name = "充电棚"
kind = "charging_shed"
warns = ["b1"]

[rules.timing]
debounce_s = 1
clear_hold_s = 1
escalate_after_s = 3600

[rules.heat]
rate_window_s = 10

[rules.ebike_battery]
rise_window_s = 10
"#;

/// A gateway running on `SITE` plus `body`, with its broker's address and parsed config.
pub struct Bench {
    pub dir: tempfile::TempDir,
    pub gateway: Gateway,
    pub broker: SocketAddr,
    pub config: edge_config::Config,
    pub config_path: PathBuf,
}

impl Bench {
    pub fn start(body: &str) -> Bench {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = write_config(dir.path(), &format!("{SITE}\n{body}"));
        let config =
            edge_config::load(&config_path).unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        let mut gateway = Gateway::start(&config_path, &dir.path().join("data"));
        let broker = gateway.wait_ready();
        Bench {
            dir,
            gateway,
            broker,
            config,
            config_path,
        }
    }

    /// Options for `scenario` against this gateway's broker.
    pub fn options(&self, scenario: Scenario, speed: f64) -> Options {
        let broker = Endpoint::parse(&self.broker.to_string()).expect("socket address");
        let mut o = Options::new(broker, scenario);
        o.speed = speed;
        o.seed = 7;
        o
    }

    /// A console-like subscriber on the local alert topics.
    pub async fn watch(&self) -> Mqtt {
        let w = Mqtt::connect(self.broker, "alert-watcher").await;
        w.subscribe("shouwang/test-site/alerts/#").await;
        w
    }

    /// Runs the simulators with `options`, recording the alert events published until the
    /// run ended and `settle` more passed.
    pub async fn play(&self, options: Options, settle: Duration) -> (Report, Events) {
        let mut watcher = self.watch().await;
        let config = self.config.clone();
        let run =
            tokio::spawn(
                async move { sensors::run(&config, &options, CancellationToken::new()).await },
            );
        let report = record(&mut watcher, run).await;
        let mut events = report.1;
        events.extend(drain(&mut watcher, settle).await);
        let report = report.0.expect("simulator task").expect("simulator run");
        (report, Events(events))
    }

    /// The gateway's `sensor message rejected` log lines so far: (device, reason, count).
    pub fn rejections(&mut self) -> Vec<(String, String, u64)> {
        self.gateway.drain_log();
        self.gateway
            .seen
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == "sensor message rejected")
            .map(|v| {
                (
                    v["device"].as_str().unwrap_or_default().to_owned(),
                    v["reason"].as_str().unwrap_or_default().to_owned(),
                    v["count"].as_u64().unwrap_or_default(),
                )
            })
            .collect()
    }
}

/// Alert events (JSON) recorded while `until` runs; returns its output and the events.
pub async fn record<T>(watcher: &mut Mqtt, until: impl Future<Output = T>) -> (T, Vec<Value>) {
    let mut events = Vec::new();
    tokio::pin!(until);
    loop {
        tokio::select! {
            out = &mut until => {
                events.extend(drain(watcher, Duration::from_millis(100)).await);
                return (out, events);
            }
            m = watcher.next(Duration::from_secs(3600)) => {
                if let Some(m) = m {
                    let v = m.json();
                    if !v.is_null() {
                        events.push(v);
                    }
                }
            }
        }
    }
}

/// Alert events recorded until one satisfies `pred` (included) or `wait` passes; the bool
/// says whether one did.
pub async fn record_until(
    watcher: &mut Mqtt,
    wait: Duration,
    pred: impl Fn(&Value) -> bool,
) -> (bool, Vec<Value>) {
    let deadline = tokio::time::Instant::now() + wait;
    let mut events = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(m) = watcher.next(left).await else {
            return (false, events);
        };
        let v = m.json();
        if v.is_null() {
            continue;
        }
        let hit = pred(&v);
        events.push(v);
        if hit {
            return (true, events);
        }
    }
}

/// Alert events arriving within `wait` of each other.
pub async fn drain(watcher: &mut Mqtt, wait: Duration) -> Vec<Value> {
    watcher
        .drain(wait)
        .await
        .iter()
        .map(|m| m.json())
        .filter(|v| !v.is_null())
        .collect()
}

/// Recorded alert events.
#[derive(Debug, Clone, Default)]
pub struct Events(pub Vec<Value>);

impl Events {
    /// Events of `kind` whose `event` is `event` (raised, updated, resolved, …).
    pub fn of(&self, kind: &str, event: &str) -> Vec<&Value> {
        self.0
            .iter()
            .filter(|v| v["kind"] == kind && v["event"] == event)
            .collect()
    }

    /// (event, level) of every event of one alert, in order.
    pub fn history(&self, id: &Value) -> Vec<(String, String)> {
        self.0
            .iter()
            .filter(|v| &v["id"] == id)
            .map(|v| (s(&v["event"]), s(&v["level"])))
            .collect()
    }

    /// Alert kinds raised, sorted.
    pub fn raised_kinds(&self) -> Vec<String> {
        let mut k: Vec<_> = self
            .0
            .iter()
            .filter(|v| v["event"] == "raised")
            .map(|v| s(&v["kind"]))
            .collect();
        k.sort();
        k
    }

    /// Every event, one per line, for failure messages.
    pub fn dump(&self) -> String {
        self.0
            .iter()
            .map(|v| {
                format!(
                    "{} {} {} {} from {}",
                    v["seq"], v["event"], v["kind"], v["level"], v["source"]["id"]
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

/// A copy of `config` keeping only the devices named in `ids`, so that several `sim sensors`
/// runs can play side by side on distinct devices (each run connects every device of its
/// configuration).
pub fn only_devices(config: &edge_config::Config, ids: &[&str]) -> edge_config::Config {
    let mut part = config.clone();
    part.devices.retain(|d| ids.contains(&d.id.as_str()));
    assert_eq!(
        part.devices.len(),
        ids.len(),
        "every device of {ids:?} is in the configuration"
    );
    part
}

/// Alert events the gateway has recorded in its database under `data_dir`.
pub fn recorded_alert_events(data_dir: &std::path::Path) -> u64 {
    let db = data_dir.join("shouwang.db");
    let conn = rusqlite::Connection::open_with_flags(
        &db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap_or_else(|e| panic!("open {}: {e}", db.display()));
    conn.busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    conn.query_row("SELECT COUNT(*) FROM alert_events", [], |r| {
        r.get::<_, i64>(0)
    })
    .unwrap_or_else(|e| panic!("count alert_events in {}: {e}", db.display())) as u64
}

/// `sim camera` serving vtest.avi (768×576) as `/cam0` on `port`, stopped on drop; returns
/// once the port accepts connections.
pub fn start_camera(port: u16) -> ChildGuard {
    let mut sim = Command::new(bin("sim"));
    sim.args(["camera", "--loop", "--port", &port.to_string(), "--footage"])
        .arg(footage("vtest.avi"));
    spawn_camera(sim, port)
}

/// `sim camera` serving vtest.avi (768×576) as an installer's camera on `port`: the H.265
/// main stream at full size on `/Streaming/Channels/101`, the H.264 sub-stream 640×480 on
/// `/Streaming/Channels/102`, both behind RTSP digest authentication as `user`/`password`
/// (handed over in SIM_CAMERA_PASSWORD, never on the command line), 10 fps; stopped on drop,
/// returns once the port accepts connections.
pub fn start_dual_camera(port: u16, user: &str, password: &str) -> ChildGuard {
    let mut sim = Command::new(bin("sim"));
    sim.args([
        "camera",
        "--loop",
        "--fps",
        "10",
        "--port",
        &port.to_string(),
    ])
    .args(["--user", user, "--dual"])
    .arg(footage("vtest.avi"))
    .env("SIM_CAMERA_PASSWORD", password);
    spawn_camera(sim, port)
}

/// A footage file of `vendor/footage`, which `./x deps` fetches.
pub fn footage(name: &str) -> PathBuf {
    let path = workspace_root().join("vendor/footage").join(name);
    assert!(path.exists(), "run ./x deps to fetch the footage");
    path
}

/// Runs a `sim camera` command (output discarded), stopped on drop; returns once `port`
/// accepts connections, and fails if the camera exits first.
pub fn spawn_camera(sim: Command, port: u16) -> ChildGuard {
    spawn_camera_within(sim, port, Duration::from_secs(10))
}

/// [`spawn_camera`], waiting up to `timeout` for the port (16 mounts take longer).
pub fn spawn_camera_within(mut sim: Command, port: u16, timeout: Duration) -> ChildGuard {
    let mut camera = ChildGuard(
        sim.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sim camera"),
    );
    let refused = process::wait_listening(&[port], timeout, || process::is_running(&mut camera.0));
    assert!(refused.is_none(), "sim camera did not listen on {port}");
    camera
}
