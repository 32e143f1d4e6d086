//! A full disk, for real: the gateway's data directory is a small tmpfs of its own (mounted in
//! a private mount namespace made with `unshare`, so nothing leaks onto the machine), filled
//! to the last byte while the gateway runs. The test reaches that directory through
//! `/proc/PID/root`, the gateway's own view of the file system.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::mqtt::Mqtt;
use e2e::{bin, write_config, Gateway};
use serde_json::Value;

const SITE: &str = r#"
[[locations.buildings]]
id = "b1"
name = "1号楼"
floors = 18
[[locations.buildings.units]]
id = "u1"
name = "1单元"

[rules.timing]
debounce_s = 0

[[devices]]
id = "b1-smoke"
kind = "smoke"
location = { building = "b1", unit = "u1", floor = 3, room = "301" }

[[console.staff]]
username = "duty"
display_name = "值班员"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2hvdXdhbmctZGVtby1zYQ$pMAMAJaZaTelU1nfxz3/8UfuGG6UrIxQfDFnKLoYXNk"
role = "staff"
"#;

/// One HTTP/1.1 exchange on a fresh connection: `(status, headers and body)`.
fn http(addr: &str, request: &str) -> (u16, String) {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, response)
}

/// What the console's banner reads, as the duty officer (password `shouwang-demo`).
fn console_health(addr: &str) -> Value {
    let body = r#"{"username":"duty","password":"shouwang-demo"}"#;
    let (status, login) = http(
        addr,
        &format!(
            "POST /login HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(status, 200, "{login}");
    let cookie = login
        .lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or(l.strip_prefix("Set-Cookie: "))
        })
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let (status, health) = http(
        addr,
        &format!(
            "GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: {cookie}\r\n\r\n"
        ),
    );
    assert_eq!(status, 200, "{health}");
    let body = health.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {health}"))
}

/// Starts the gateway with `data` as a fresh `size` tmpfs that only the gateway sees.
fn start_on_tmpfs(config: &Path, data: &Path, size: &str) -> Gateway {
    std::fs::create_dir_all(data).unwrap();
    let mut command = Command::new("unshare");
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // Without root, a user namespace of our own grants the right to mount.
        command.args(["--user", "--map-root-user"]);
    }
    command
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(
            r#"mount -t tmpfs -o "size=$1" shouwang-test "$2" && exec "$3" --log-format json run --config "$4" --data-dir "$2""#,
        )
        .arg("sh")
        .arg(size)
        .arg(data)
        .arg(bin("gateway"))
        .arg(config);
    Gateway::spawn(command)
}

/// Writes zeros into `dir/filler` until the file system says it is full.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("create the filler");
    let block = vec![0u8; 64 * 1024];
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    path
}

/// `gateway status --json`, run in the gateway's mount namespace (SQLite resolves
/// `/proc/PID/root` to `/` and would look for the database outside the tmpfs).
fn status(pid: u32, data: &Path) -> Value {
    let mut command = Command::new("nsenter");
    command.arg("--target").arg(pid.to_string());
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        command.args(["--preserve-credentials", "--user"]);
    }
    let out = command
        .args(["--mount", "--"])
        .arg(bin("gateway"))
        .args(["status", "--json", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gateway status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Polls `gateway status` until `check` holds; returns that report.
fn status_until(pid: u32, data: &Path, wait: Duration, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + wait;
    loop {
        let report = status(pid, data);
        if check(&report) {
            return report;
        }
        assert!(Instant::now() < deadline, "status never matched: {report}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smoke_alarm_raised_on_a_full_disk_is_published_with_its_time_once_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), SITE);
    let mount_point = dir.path().join("data");
    let mut gateway = start_on_tmpfs(&config, &mount_point, "8m");
    let ready = gateway.wait_for_message("gateway ready", Duration::from_secs(30));
    let broker: std::net::SocketAddr = ready["broker"].as_str().unwrap().parse().unwrap();
    let console = ready["console"].as_str().unwrap().to_owned();
    // The tmpfs as the test sees it: through the gateway's own root.
    let data = PathBuf::from(format!("/proc/{}/root", gateway.pid())).join(
        mount_point
            .strip_prefix("/")
            .expect("tempdir paths are absolute"),
    );
    assert!(
        data.join("shouwang.db").exists(),
        "the gateway's database is not where the test looks: {}",
        data.display()
    );
    let mut watcher = Mqtt::connect(broker, "disk-full-watcher").await;
    watcher.subscribe("shouwang/test-site/alerts/#").await;
    let sensor = Mqtt::connect(broker, "b1-smoke").await;

    let filler = fill(&data);
    let alarm_at = chrono::Utc::now();
    sensor
        .publish("sensors/b1-smoke/state", r#"{"smoke":true}"#)
        .await;

    // Refused, not lost: nothing is published, the log says why, status shows it waiting.
    let refused = gateway.wait_for_message(
        "alert events cannot be recorded (disk full?); they wait in memory and are retried every second",
        Duration::from_secs(10),
    );
    let error = refused["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.contains("full"), "{refused}");
    let waiting = status_until(gateway.pid(), &mount_point, Duration::from_secs(10), |r| {
        r["alert_store"]["deferred"] == 1
    });
    assert_eq!(waiting["running"], true, "{waiting}");
    assert!(
        waiting["alert_store"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("full")),
        "{waiting}"
    );
    let banner = console_health(&console);
    assert_eq!(banner["alert_store"]["deferred"], 1, "{banner}");
    let early = watcher.drain(Duration::from_secs(2)).await;
    assert!(
        early.is_empty(),
        "an alert was published before it was recorded: {:?}",
        early.iter().map(|m| m.json()).collect::<Vec<_>>()
    );

    std::fs::remove_file(&filler).unwrap();
    let freed_at = chrono::Utc::now();
    let message = watcher
        .next(Duration::from_secs(10))
        .await
        .expect("the deferred smoke alarm is published once space is back");
    let alert = message.json();
    assert_eq!(
        (&alert["kind"], &alert["level"], &alert["event"]),
        (
            &Value::from("smoke"),
            &Value::from("red"),
            &Value::from("raised")
        ),
        "{alert}"
    );
    let raised_at = alert["raised_at"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .expect("raised_at is RFC 3339");
    assert!(
        raised_at >= alarm_at - chrono::Duration::milliseconds(5) && raised_at < freed_at,
        "raised_at {raised_at} is not the alarm's arrival ({alarm_at}), before the disk was freed ({freed_at})"
    );
    let recovered = status_until(gateway.pid(), &mount_point, Duration::from_secs(10), |r| {
        r["alert_store"]["deferred"] == 0
    });
    assert!(
        recovered["alert_store"]["failures_total"].as_u64() >= Some(1),
        "{recovered}"
    );
    assert_eq!(console_health(&console)["alert_store"]["deferred"], 0);

    gateway.signal(libc::SIGTERM);
    let exit = gateway
        .wait_exit(Duration::from_secs(15))
        .expect("the gateway stops on SIGTERM");
    assert!(
        exit.success(),
        "exit {exit:?}; log:\n{}",
        gateway.seen.join("\n")
    );
}
