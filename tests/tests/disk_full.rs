//! A full disk, for real: the gateway's data directory is a small tmpfs of its own (mounted in
//! a private mount namespace made with `unshare`, so nothing leaks onto the machine), filled
//! to the last byte while the gateway runs. The test reaches that directory through
//! `/proc/PID/root`, the gateway's own view of the file system.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::mqtt::Mqtt;
use e2e::{bin, http, write_config, Gateway};
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

/// What the console's banner reads, as the duty officer (password `shouwang-demo`).
fn console_health(addr: &str) -> Value {
    let login = http::request(
        addr,
        "POST",
        "/login",
        &["Content-Type: application/json"],
        r#"{"username":"duty","password":"shouwang-demo"}"#,
    );
    assert_eq!(login.status, 200, "{}", login.raw);
    let cookie = login
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .expect("a session cookie");
    let health = http::request(
        addr,
        "GET",
        "/api/health",
        &[&format!("Cookie: {cookie}")],
        "",
    );
    assert_eq!(health.status, 200, "{}", health.raw);
    serde_json::from_str(health.body()).unwrap_or_else(|e| panic!("{e}: {}", health.raw))
}

/// Run the gateway once (`exec`, so the child's pid is the gateway's).
const ONCE: &str = r#"mount -t tmpfs -o "size=$1" shouwang-test "$2" || exit 1
exec "$3" --log-format json run --config "$4" --data-dir "$2""#;

/// Run it, and once it has stopped and `$5` exists, run it again on the same tmpfs.
const TWICE: &str = r#"mount -t tmpfs -o "size=$1" shouwang-test "$2" || exit 1
"$3" --log-format json run --config "$4" --data-dir "$2"
while [ ! -e "$5" ]; do sleep 0.1; done
exec "$3" --log-format json run --config "$4" --data-dir "$2""#;

/// Whether mounting in a mount namespace of our own needs a user namespace too: not as a
/// root with the right to mount; yes without root (or as a root confined without it). Tried
/// once for real; neither working is a loud failure, since the test cannot run without it.
fn needs_user_namespace() -> bool {
    static ANSWER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ANSWER.get_or_init(|| {
        let probe = |extra: &[&str]| {
            let dir = tempfile::tempdir().unwrap();
            Command::new("unshare")
                .args(extra)
                .args(["--mount", "--propagation", "private", "--"])
                .args(["mount", "-t", "tmpfs", "-o", "size=1m", "probe"])
                .arg(dir.path())
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if probe(&[]) {
            false
        } else if probe(&["--user", "--map-root-user"]) {
            true
        } else {
            panic!(
                "cannot mount a tmpfs in a private mount namespace (`unshare --mount`, with or \
                 without `--user --map-root-user`): this test needs root or unprivileged user \
                 namespaces (sysctl kernel.unprivileged_userns_clone=1)"
            )
        }
    })
}

/// A gateway whose data directory is a fresh tmpfs that only it sees.
struct OnTmpfs {
    dir: tempfile::TempDir,
    gateway: Gateway,
    /// The data directory as the gateway sees it.
    mount_point: PathBuf,
    /// The same directory as the test sees it: through the namespace's own root.
    data: PathBuf,
    broker: SocketAddr,
    console: String,
}

impl OnTmpfs {
    fn start(config_body: &str, size: &str, script: &str) -> OnTmpfs {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), config_body);
        let mount_point = dir.path().join("data");
        std::fs::create_dir_all(&mount_point).unwrap();
        let mut command = Command::new("unshare");
        if needs_user_namespace() {
            command.args(["--user", "--map-root-user"]);
        }
        command
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                script,
                "sh",
            ])
            .arg(size)
            .arg(&mount_point)
            .arg(bin("gateway"))
            .arg(&config)
            .arg(dir.path().join("restart"));
        let gateway = Gateway::spawn(command);
        let data = PathBuf::from(format!("/proc/{}/root", gateway.pid())).join(
            mount_point
                .strip_prefix("/")
                .expect("tempdir paths are absolute"),
        );
        let mut site = OnTmpfs {
            dir,
            gateway,
            mount_point,
            data,
            broker: SocketAddr::from(([127, 0, 0, 1], 0)),
            console: String::new(),
        };
        site.wait_ready();
        assert!(
            site.data.join("shouwang.db").exists(),
            "the gateway's database is not where the test looks: {}",
            site.data.display()
        );
        site
    }

    fn wait_ready(&mut self) {
        let ready = self
            .gateway
            .wait_for_message("gateway ready", Duration::from_secs(30));
        self.broker = ready["broker"].as_str().unwrap().parse().unwrap();
        self.console = ready["console"].as_str().unwrap().to_owned();
    }

    fn status_until(&self, wait: Duration, check: impl Fn(&Value) -> bool) -> Value {
        status_until(self.gateway.pid(), &self.mount_point, wait, check)
    }

    async fn watcher(&self) -> Mqtt {
        let watcher = Mqtt::connect(self.broker, "disk-full-watcher").await;
        watcher.subscribe("shouwang/test-site/alerts/#").await;
        watcher
    }

    async fn smoke_alarm(&self) -> chrono::DateTime<chrono::Utc> {
        let sensor = Mqtt::connect(self.broker, "b1-smoke").await;
        let at = chrono::Utc::now();
        sensor
            .publish("sensors/b1-smoke/state", r#"{"smoke":true}"#)
            .await;
        at
    }

    fn stop(mut self) {
        self.gateway.signal(libc::SIGTERM);
        let exit = self
            .gateway
            .wait_exit(Duration::from_secs(15))
            .expect("the gateway stops on SIGTERM");
        assert!(
            exit.success(),
            "exit {exit:?}; log:\n{}",
            self.gateway.seen.join("\n")
        );
    }
}

/// The first message on `watcher` must be a red smoke alarm being raised; returns it.
async fn red_smoke_raised(watcher: &mut Mqtt, wait: Duration) -> Value {
    let alert = watcher
        .next(wait)
        .await
        .expect("the smoke alarm is published")
        .json();
    assert_eq!(
        (&alert["kind"], &alert["level"], &alert["event"]),
        (
            &Value::from("smoke"),
            &Value::from("red"),
            &Value::from("raised")
        ),
        "{alert}"
    );
    alert
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
    if needs_user_namespace() {
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
    let mut site = OnTmpfs::start(&format!("{SITE}\n[storage]\nreserve_mb = 0\n"), "8m", ONCE);
    let mut watcher = site.watcher().await;
    let filler = fill(&site.data);
    let alarm_at = site.smoke_alarm().await;

    // Refused, not lost: nothing is published, the log says why, status shows it waiting.
    let refused = site.gateway.wait_for_message(
        "alert events cannot be recorded (disk full?); they wait in memory and are retried every second",
        Duration::from_secs(10),
    );
    let error = refused["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.contains("full"), "{refused}");
    let waiting = site.status_until(Duration::from_secs(10), |r| {
        r["alert_store"]["deferred"] == 1
    });
    assert_eq!(waiting["running"], true, "{waiting}");
    assert!(
        waiting["alert_store"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("full")),
        "{waiting}"
    );
    let banner = console_health(&site.console);
    assert_eq!(banner["alert_store"]["deferred"], 1, "{banner}");
    let early = watcher.drain(Duration::from_secs(2)).await;
    assert!(
        early.is_empty(),
        "an alert was published before it was recorded: {:?}",
        early.iter().map(|m| m.json()).collect::<Vec<_>>()
    );

    std::fs::remove_file(&filler).unwrap();
    let freed_at = chrono::Utc::now();
    let alert = red_smoke_raised(&mut watcher, Duration::from_secs(10)).await;
    let raised_at = alert["raised_at"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .expect("raised_at is RFC 3339");
    assert!(
        raised_at >= alarm_at - chrono::Duration::milliseconds(5) && raised_at < freed_at,
        "raised_at {raised_at} is not the alarm's arrival ({alarm_at}), before the disk was freed ({freed_at})"
    );
    let recovered = site.status_until(Duration::from_secs(10), |r| {
        r["alert_store"]["deferred"] == 0
    });
    assert!(
        recovered["alert_store"]["failures_total"].as_u64() >= Some(1),
        "{recovered}"
    );
    assert_eq!(console_health(&site.console)["alert_store"]["deferred"], 0);
    site.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_disk_reserve_a_smoke_alarm_on_a_full_disk_is_published_at_once() {
    let site = OnTmpfs::start(SITE, "24m", ONCE);
    assert!(
        site.data.join("reserve.bin").metadata().unwrap().len() == 16 * 1024 * 1024,
        "the default reserve is 16 MiB"
    );
    let held = site.status_until(Duration::from_secs(10), |r| r["reserve"]["held"] == true);
    assert_eq!(held["reserve"]["bytes"], 16 * 1024 * 1024);
    let mut watcher = site.watcher().await;
    let _filler = fill(&site.data);
    site.smoke_alarm().await;

    red_smoke_raised(&mut watcher, Duration::from_secs(5)).await;
    assert!(
        !site.data.join("reserve.bin").exists(),
        "given up for the alarm"
    );
    let released = site.status_until(Duration::from_secs(10), |r| r["reserve"]["held"] == false);
    assert_eq!(
        released["reserve"]["released_for"], "recording alert events",
        "{released}"
    );
    assert_eq!(released["alert_store"]["deferred"], 0, "{released}");
    let banner = console_health(&site.console);
    assert_eq!(banner["reserve"]["held"], false, "{banner}");
    site.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restarted_on_a_full_disk_starts_on_its_reserve_and_records_alarms() {
    let mut site = OnTmpfs::start(SITE, "24m", TWICE);
    // The first run: stop it (the child is the shell; status.json names the gateway).
    let first = site.status_until(Duration::from_secs(10), |r| r["running"] == true);
    let status_file: Value =
        serde_json::from_slice(&std::fs::read(site.data.join("status.json")).unwrap()).unwrap();
    let pid = status_file["pid"]
        .as_i64()
        .expect("status.json has the pid") as i32;
    assert!(first["reserve"]["held"] == true, "{first}");
    // SAFETY: kill(2) on a process of this test's own tree has no memory preconditions.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    site.gateway
        .wait_for_message("gateway stopped cleanly", Duration::from_secs(15));

    // The disk fills up while it is down (a camera archive, say), then it comes back.
    let _filler = fill(&site.data);
    std::fs::write(site.dir.path().join("restart"), b"").unwrap();
    site.gateway.wait_for_message(
        "retrying the database with the reserve's room",
        Duration::from_secs(30),
    );
    site.wait_ready();
    let mut watcher = site.watcher().await;
    site.smoke_alarm().await;
    red_smoke_raised(&mut watcher, Duration::from_secs(5)).await;
    let released = site.status_until(Duration::from_secs(10), |r| r["reserve"]["held"] == false);
    assert_eq!(
        released["reserve"]["released_for"], "opening the database",
        "{released}"
    );
    site.stop();
}
