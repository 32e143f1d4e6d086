//! The packaged unit runs the gateway as `Type=notify` with `WatchdogSec=`: systemd restarts
//! it when its pings stop. Here the test plays systemd's part — the notify socket and the
//! watchdog environment — around the real `gateway` binary, and wedges the alarm path with
//! the test-only fault injection of `gateway::supervise`.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::Gateway;
use serde_json::Value;

const SITE: &str = r#"
[site]
id = "watchdog-site"
name = "Watchdog"
kind = "compound"

[broker]
bind = "127.0.0.1:0"

[console]
bind = "127.0.0.1:0"

[supervision]
self_test_period_s = 1
self_test_timeout_s = 3

[[devices]]
id = "b1-smoke"
kind = "smoke"
location = { area = "lobby" }

[[locations.areas]]
id = "lobby"
name = "Lobby"
kind = "lobby"
"#;

/// systemd's side of the notify protocol: the datagram socket it binds for its service.
struct ServiceManager {
    socket: UnixDatagram,
    path: PathBuf,
}

impl ServiceManager {
    fn bind(dir: &Path) -> ServiceManager {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        ServiceManager { socket, path }
    }

    /// The datagrams received within `window`, each as its lines.
    fn received_within(&self, window: Duration) -> Vec<String> {
        let deadline = Instant::now() + window;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if left.is_zero() {
                break;
            }
            self.socket.set_read_timeout(Some(left)).unwrap();
            match self.socket.recv(&mut buf) {
                Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(_) => break,
            }
        }
        got
    }

    /// Waits for a datagram with the line `line`; returns what came until then.
    fn wait_for(&self, line: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            for d in self.received_within(Duration::from_millis(200)) {
                let hit = d.lines().any(|l| l == line);
                seen.push(d);
                if hit {
                    return seen;
                }
            }
        }
        panic!("no {line} within {timeout:?}; received: {seen:?}");
    }
}

fn pings(datagrams: &[String]) -> usize {
    datagrams
        .iter()
        .filter(|d| d.lines().any(|l| l == "WATCHDOG=1"))
        .count()
}

fn status(data: &Path) -> Value {
    let out = Command::new(e2e::bin("gateway"))
        .args(["status", "--json", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn status_until(data: &Path, timeout: Duration, done: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let s = status(data);
        if done(&s) {
            return;
        }
        assert!(Instant::now() < deadline, "status never got there: {s:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts the gateway the way systemd does for `Type=notify` with `WatchdogSec=2`:
/// `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` (the service's own pid, hence the
/// shell that execs the gateway in its place).
fn start_as_a_service(dir: &Path, manager: &ServiceManager) -> (Gateway, PathBuf, PathBuf) {
    let config = dir.join("gateway.toml");
    std::fs::write(&config, SITE).unwrap();
    let (data, faults) = (dir.join("data"), dir.join("faults"));
    std::fs::create_dir_all(&faults).unwrap();
    let mut command = Command::new("sh");
    command
        .args(["-c", r#"export WATCHDOG_PID=$$; exec "$0" "$@""#])
        .arg(e2e::bin("gateway"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .env("NOTIFY_SOCKET", &manager.path)
        .env("WATCHDOG_USEC", "2000000")
        .env(gateway::supervise::FAULT_INJECTION_ENV, &faults);
    let mut gateway = Gateway::spawn(command);
    gateway.wait_ready();
    (gateway, data, faults)
}

#[test]
fn watchdog_pings_stop_while_the_alarm_path_is_wedged_so_systemd_restarts_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let manager = ServiceManager::bind(dir.path());
    let (mut gateway, data, faults) = start_as_a_service(dir.path(), &manager);
    manager.wait_for("READY=1", Duration::from_secs(5));
    // WatchdogSec=2: a ping every second while the alarm path works.
    let healthy = manager.received_within(Duration::from_secs(3));
    assert!(pings(&healthy) >= 2, "too few pings: {healthy:?}");

    // Wedge the alert task: probes stop coming back, the self-test fails after 3 s...
    let wedge = faults.join("alerts.wedge");
    std::fs::write(&wedge, b"").unwrap();
    status_until(&data, Duration::from_secs(8), |s| {
        !s["self_test"]["failing_since"].is_null()
    });
    // ...and from then on no ping: systemd would kill and restart the service within
    // WatchdogSec. (A ping already in the socket from before the verdict is drained first.)
    manager.received_within(Duration::from_millis(1200));
    let wedged = manager.received_within(Duration::from_secs(3));
    assert_eq!(pings(&wedged), 0, "pinged while wedged: {wedged:?}");
    assert!(
        wedged
            .iter()
            .any(|d| d.contains("STATUS=FAULT: alarm path")),
        "systemctl status shows the fault: {wedged:?}"
    );

    // Unwedged: the next round trip passes and the pings come back.
    std::fs::remove_file(&wedge).unwrap();
    manager.wait_for("WATCHDOG=1", Duration::from_secs(8));

    gateway.signal(libc::SIGTERM);
    manager.wait_for("STOPPING=1", Duration::from_secs(5));
    let exit = gateway.wait_exit(Duration::from_secs(10)).expect("exited");
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn outside_systemd_the_gateway_sends_nothing_and_runs() {
    // No NOTIFY_SOCKET: the notify calls are no-ops, nothing fails, the gateway is ready.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, SITE).unwrap();
    let mut gateway = Gateway::start(&config, &dir.path().join("data"));
    gateway.wait_ready();
    gateway.drain_log();
    assert!(
        !gateway
            .seen
            .iter()
            .any(|l| l.contains("notify the service manager")),
        "{:?}",
        gateway.seen
    );
}
