//! `/metrics` scraped by a real Prometheus server (Debian's `prometheus`): the real
//! `gateway` binary with `[metrics]` on a free loopback port, a smoke alarm over real MQTT,
//! and the counters read back through Prometheus's own HTTP query API.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use e2e::mqtt::Mqtt;
use e2e::{eventually, write_config, Gateway};
use serde_json::Value;

const SMOKE: &str = r#"
[rules.timing]
debounce_s = 0

[[locations.buildings]]
id = "b1"
name = "1号楼"
floors = 6

[[devices]]
id = "b1-smoke"
kind = "smoke"
location = { building = "b1", floor = 3, room = "301" }
"#;

const WAIT: Duration = Duration::from_secs(30);

/// A Prometheus server scraping one target every second, with its data in a temporary
/// directory. Killed on drop.
struct Prometheus {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let bin = prometheus_binary();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: shouwang\n    scrape_interval: 1s\n    \
                 scrape_timeout: 1s\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", e2e::upstream::free_port());
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus { child, addr, dir }
    }

    /// The first sample's value of an instant query, or why there is none.
    fn query(&self, promql: &str) -> Result<f64, String> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        // Prometheus may not listen yet: a refused connection is "not yet", not a failure.
        let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
        let wait = Duration::from_secs(5);
        let response = e2e::http::request_from(loopback, &self.addr, "GET", &path, &[], "", wait)
            .map_err(|e| format!("Prometheus at {}: {e}", self.addr))?;
        let (status, body) = (response.status, response.body());
        let json: Value =
            serde_json::from_str(body).map_err(|e| format!("HTTP {status}: {e}: {body}"))?;
        json["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no sample for {promql}: {json}"))
    }

    /// `query` until `accept` likes its value, within [`WAIT`].
    async fn until(&self, promql: &str, accept: impl Fn(f64) -> bool) -> f64 {
        eventually(WAIT, &format!("Prometheus: {promql}"), || {
            self.query(promql).and_then(|v| {
                if accept(v) {
                    Ok(v)
                } else {
                    Err(format!("{promql} = {v}"))
                }
            })
        })
        .await
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's `prometheus`, or a failure that says how to get it (never a silent skip).
fn prometheus_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("prometheus"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| {
        panic!(
            "the `prometheus` server binary is missing: run ./x deps (it installs Debian's \
             `prometheus` package), then run this test again"
        )
    })
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Starts the gateway with `body` and returns it with its `/metrics` address, if it logged one.
fn start_gateway(dir: &Path, body: &str) -> (Gateway, Option<SocketAddr>, SocketAddr) {
    let config = write_config(dir, body);
    let mut gateway = Gateway::start(&config, &dir.join("data"));
    let broker = gateway.wait_ready();
    let metrics = gateway
        .seen
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "metrics listening")
        .and_then(|v| v["addr"].as_str().and_then(|a| a.parse().ok()));
    (gateway, metrics, broker)
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_a_smoke_alarm_off_the_gateways_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let body = format!("[metrics]\nbind = \"127.0.0.1:0\"\n{SMOKE}");
    let (gateway, metrics, broker) = start_gateway(dir.path(), &body);
    let metrics = metrics
        .unwrap_or_else(|| panic!("no `metrics listening` line:\n{}", gateway.seen.join("\n")));
    assert!(
        metrics.ip().is_loopback() && metrics.port() != 0,
        "{metrics}"
    );
    assert!(listening_ports(gateway.pid()).contains(&metrics.port()));
    let prometheus = Prometheus::start(metrics);
    prometheus.until("up{job=\"shouwang\"}", |v| v == 1.0).await;

    let sensor = Mqtt::connect(broker, "b1-smoke").await;
    sensor
        .publish("sensors/b1-smoke/state", r#"{"smoke":true}"#)
        .await;

    let raised = prometheus
        .until(
            "shouwang_alerts_raised_total{kind=\"smoke\",level=\"red\"}",
            |v| v >= 1.0,
        )
        .await;
    assert_eq!(raised, 1.0, "one smoke alarm, one raised alert");
    let accepted = prometheus
        .until("shouwang_sensor_messages_accepted_total", |v| v >= 1.0)
        .await;
    assert!(accepted >= 1.0);
    let active = prometheus
        .until("shouwang_alerts_active{level=\"red\"}", |v| v >= 1.0)
        .await;
    assert_eq!(active, 1.0);
    let rss = prometheus
        .until("shouwang_process_resident_memory_bytes", |v| v > 0.0)
        .await;
    assert!(rss > 1_000_000.0, "a gateway takes more than 1 MB: {rss}");
    let commits = prometheus
        .until("shouwang_alert_commit_seconds_count", |v| v >= 1.0)
        .await;
    assert!(commits >= 1.0);
    assert!(
        !prometheus.log().contains("level=error"),
        "{}",
        prometheus.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_metrics_table_the_gateway_serves_no_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let (gateway, metrics, broker) = start_gateway(dir.path(), SMOKE);
    assert_eq!(metrics, None, "{}", gateway.seen.join("\n"));
    // Whatever the gateway listens on (broker front, broker, console), none serves metrics.
    let ports = listening_ports(gateway.pid());
    assert!(ports.contains(&broker.port()), "{ports:?}");
    assert!(!ports.contains(&edge_config::DEFAULT_METRICS_BIND.port()));
    for port in ports {
        let addr = format!("127.0.0.1:{port}");
        let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
        let wait = Duration::from_secs(3);
        if let Ok(r) = e2e::http::request_from(loopback, &addr, "GET", "/metrics", &[], "", wait) {
            assert!(
                !(r.status == 200 && r.body().contains("shouwang_")),
                "port {port} serves metrics: {}",
                r.raw
            );
        }
    }
}

/// The TCP ports process `pid` listens on: its socket inodes (`/proc/PID/fd`) matched with
/// the listening sockets of `/proc/net/tcp` and `tcp6`.
fn listening_ports(pid: u32) -> BTreeSet<u16> {
    let inodes: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut ports = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for cols in text
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
        {
            // local_address is HEXIP:HEXPORT, st 0A is LISTEN, column 9 the inode.
            let (Some(local), Some(&"0A"), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9))
            else {
                continue;
            };
            if inodes.contains(*inode) {
                let port = local.rsplit(':').next().unwrap();
                ports.insert(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}
