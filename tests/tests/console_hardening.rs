//! A hostile LAN against the real `gateway` binary's console: login floods, lock-out from
//! another machine, cross-origin form posts, idle connections at a 1,024 descriptor limit,
//! event streams outliving their session, weak staff hashes and world-readable secrets.
//!
//! "Another machine" is another loopback address: the attacker talks from `127.0.0.2` (the
//! login flood from `127.0.0.2`–`127.0.0.11`), the duty officer from `127.0.0.1`.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use e2e::http::{self, Response};
use e2e::mqtt::Mqtt;
use e2e::upstream::{Collector, Upstream};
use e2e::{bin, Gateway};

const DUTY: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const HOSTILE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const PASSWORD: &str = "shouwang-demo";
const WAIT: Duration = Duration::from_secs(30);

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
clear_hold_s = 1
escalate_after_s = 600

[[devices]]
id = "b1-smoke"
kind = "smoke"
location = { building = "b1", unit = "u1", floor = 3, room = "301" }

[[console.staff]]
username = "duty"
display_name = "Duty officer"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2hvdXdhbmctZGVtby1zYQ$pMAMAJaZaTelU1nfxz3/8UfuGG6UrIxQfDFnKLoYXNk"
role = "admin"
"#;

/// How the gateway process is started.
#[derive(Default)]
struct Launch {
    /// `RLIMIT_NOFILE` (soft and hard) set before exec.
    nofile: Option<u64>,
    /// The umask the gateway inherits.
    umask: Option<libc::mode_t>,
    /// TOML appended to the configuration (e.g. an `[uplink]`).
    extra: String,
    /// Create the data directory with this mode first (as an older install left it).
    data_mode: Option<u32>,
}

struct Site {
    dir: tempfile::TempDir,
    config: PathBuf,
    data: PathBuf,
    gateway: Gateway,
    broker: SocketAddr,
    console: String,
}

impl Site {
    fn start(launch: Launch) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[site]\nid = \"test-site\"\nname = \"Test\"\nkind = \"compound\"\n\n[broker]\n\
             bind = \"127.0.0.1:0\"\n\n[console]\nbind = \"127.0.0.1:0\"\n\
             lockout_after_failures = 3\n\n{SITE}\n{}\n",
            launch.extra
        );
        let config = dir.path().join("gateway.toml");
        std::fs::write(&config, text).unwrap();
        let data = dir.path().join("data");
        if let Some(mode) = launch.data_mode {
            std::fs::create_dir(&data).unwrap();
            std::fs::set_permissions(&data, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let mut command = Command::new(bin("gateway"));
        command
            .args(["--log-format", "json", "run", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(&data);
        let (nofile, umask) = (launch.nofile, launch.umask);
        // SAFETY: only async-signal-safe calls (setrlimit, umask) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if let Some(n) = nofile {
                    let limit = libc::rlimit {
                        rlim_cur: n as libc::rlim_t,
                        rlim_max: n as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if let Some(mask) = umask {
                    libc::umask(mask);
                }
                Ok(())
            });
        }
        let mut gateway = Gateway::spawn(command);
        let ready = gateway.wait_for_message("gateway ready", WAIT);
        let broker = ready["broker"].as_str().unwrap().parse().unwrap();
        let console = ready["console"].as_str().unwrap().to_owned();
        Site {
            dir,
            config,
            data,
            gateway,
            broker,
            console,
        }
    }

    /// `POST /login` (JSON) from `source`.
    fn login_from(&self, source: IpAddr, user: &str, password: &str) -> std::io::Result<Response> {
        let body = serde_json::json!({ "username": user, "password": password }).to_string();
        http::request_from(
            source,
            &self.console,
            "POST",
            "/login",
            &["Content-Type: application/json"],
            &body,
            WAIT,
        )
    }

    /// Logs the duty officer in from `127.0.0.1`; returns the `Cookie:` header line.
    fn duty_cookie(&self) -> String {
        let r = self.login_from(DUTY, "duty", PASSWORD).unwrap();
        assert_eq!(r.status, 200, "{}", r.raw);
        let cookie = r.header("set-cookie").expect("a session cookie");
        format!("Cookie: {}", cookie.split(';').next().unwrap())
    }
}

/// Resident set size of `pid` in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Raises this test process's own descriptor limit (it holds the idle connections).
fn raise_own_nofile() {
    // SAFETY: getrlimit/setrlimit on this process with a valid struct.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        assert!(limit.rlim_cur >= 2048, "the test needs 2,048 descriptors");
    }
}

#[test]
fn a_login_flood_grows_memory_by_less_than_64_mb_and_the_duty_officer_still_logs_in() {
    let site = Site::start(Launch::default());
    let pid = site.gateway.pid();
    // One correct login first: the first password check allocates its memory once.
    site.duty_cookie();
    let base = rss(pid);
    let peak = Arc::new(AtomicU64::new(base));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    const FLOOD: usize = 100;
    let start = Arc::new(Barrier::new(FLOOD + 1));
    let flood: Vec<_> = (0..FLOOD)
        .map(|i| {
            let (start, console) = (start.clone(), site.console.clone());
            std::thread::spawn(move || {
                // Random user names; every fifth one a megabyte long.
                let mut user = format!("{}-{i}", ulid::Ulid::generate());
                if i % 5 == 0 {
                    user.push_str(&"x".repeat(1 << 20));
                }
                let body = serde_json::json!({ "username": user, "password": "guess" });
                // Ten hostile machines, ten logins each.
                let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 10) as u8));
                start.wait();
                http::request_from(
                    source,
                    &console,
                    "POST",
                    "/login",
                    &["Content-Type: application/json"],
                    &body.to_string(),
                    WAIT,
                )
                .map(|r| r.status)
            })
        })
        .collect();
    start.wait();
    let during = site.login_from(DUTY, "duty", PASSWORD);
    let statuses: Vec<_> = flood.into_iter().map(|t| t.join().unwrap()).collect();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let during = during.expect("the duty officer's login is answered during the flood");
    assert_eq!(during.status, 200, "{}", during.raw);
    for s in &statuses {
        // Refused with a status, or the connection closed on it (too many from one address).
        let refused = match s {
            Ok(status) => matches!(status, 400 | 401 | 413 | 429 | 503),
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
        };
        assert!(refused, "a flood login was answered with {s:?}");
    }
    let grown = peak.load(Ordering::Relaxed).saturating_sub(base);
    let mut answers = std::collections::BTreeMap::new();
    for s in &statuses {
        let key = s
            .as_ref()
            .map_or_else(|e| format!("{:?}", e.kind()), |c| c.to_string());
        *answers.entry(key).or_insert(0) += 1;
    }
    eprintln!(
        "flood answers {answers:?}; RSS {} MiB + {} KiB",
        base >> 20,
        grown >> 10
    );
    assert!(
        grown < 64 << 20,
        "RSS grew by {} MiB under the flood (from {} MiB)",
        grown >> 20,
        base >> 20
    );
    let log: u64 = site.gateway.seen.iter().map(|l| l.len() as u64).sum();
    assert!(log < 1 << 20, "the flood wrote {log} bytes of log");
}

#[test]
fn a_user_name_throttled_from_one_address_still_logs_in_from_another() {
    let site = Site::start(Launch::default());
    let mut last = 0;
    for _ in 0..5 {
        last = site.login_from(HOSTILE, "duty", "wrong").unwrap().status;
    }
    assert_eq!(
        last, 429,
        "repeated failures from one address are throttled"
    );
    let there = site.login_from(HOSTILE, "duty", PASSWORD).unwrap();
    assert_eq!(
        there.status, 429,
        "throttled there, even for the right password"
    );
    assert!(there.header("retry-after").is_some());
    let here = site.login_from(DUTY, "duty", PASSWORD).unwrap();
    assert_eq!(
        here.status, 200,
        "the duty officer's own machine: {}",
        here.raw
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_origin_acknowledgement_is_refused_403() {
    let site = Site::start(Launch::default());
    let cookie = site.duty_cookie();
    let smoke = Mqtt::connect(site.broker, "b1-smoke").await;
    smoke
        .publish("sensors/b1-smoke/state", r#"{"smoke":true}"#)
        .await;
    let console = site.console.clone();
    let get = |path: &str| http::request(&console, "GET", path, &[&cookie], "");
    let id = e2e::eventually(WAIT, "the smoke alert in the console", || {
        let list: serde_json::Value =
            serde_json::from_str(get("/api/alerts").body()).map_err(|e| e.to_string())?;
        list[0]["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| list.to_string())
    })
    .await;
    let ack = format!("/api/alerts/{id}/ack");
    let evil = http::request(
        &console,
        "POST",
        &ack,
        &[&cookie, "Origin: http://evil.example"],
        "",
    );
    assert_eq!(evil.status, 403, "{}", evil.raw);
    let cross_site = http::request(
        &console,
        "POST",
        &ack,
        &[&cookie, "Sec-Fetch-Site: cross-site"],
        "",
    );
    assert_eq!(cross_site.status, 403, "{}", cross_site.raw);
    let forged_login = http::request(
        &console,
        "POST",
        "/login",
        &[
            "Origin: http://evil.example",
            "Content-Type: application/x-www-form-urlencoded",
        ],
        "username=duty&password=wrong",
    );
    assert_eq!(forged_login.status, 403, "{}", forged_login.raw);
    let alert: serde_json::Value =
        serde_json::from_str(get(&format!("/api/alerts/{id}")).body()).unwrap();
    assert!(alert["acknowledged_at"].is_null(), "{alert}");
    let origin = format!("Origin: http://{console}");
    let own = http::request(
        &console,
        "POST",
        &ack,
        &[&cookie, &origin, "Sec-Fetch-Site: same-origin"],
        "",
    );
    assert_eq!(own.status, 200, "{}", own.raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_1024_descriptors_1100_idle_console_connections_starve_neither_alarms_nor_logins() {
    raise_own_nofile();
    let tmp = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(tmp.path());
    let collector = Collector::start(&upstream, "platform-idle").await;
    let site = Site::start(Launch {
        nofile: Some(1024),
        extra: upstream.uplink_toml("gw.pass"),
        ..Launch::default()
    });
    let mut idle = Vec::new();
    for _ in 0..1100 {
        match http::connect_from(HOSTILE, &site.console, Duration::from_secs(2)) {
            Ok(s) => idle.push(s),
            Err(_) => break, // the gateway stopped accepting: the backlog is full
        }
    }
    let connected = idle.len();
    let smoke = tokio::time::timeout(WAIT, Mqtt::connect(site.broker, "b1-smoke"))
        .await
        .expect("the smoke detector can still connect to the broker");
    smoke
        .publish("sensors/b1-smoke/state", r#"{"smoke":true}"#)
        .await;
    let upstream_got_it = collector
        .wait_until(WAIT, |alerts| {
            alerts
                .iter()
                .any(|a| a.json["kind"] == "smoke" && a.json["event"] == "raised")
        })
        .await;
    assert!(
        upstream_got_it,
        "the smoke alarm never reached the platform ({connected} idle connections)"
    );
    let login = site.login_from(DUTY, "duty", PASSWORD);
    let login = login.expect("the login is answered");
    assert_eq!(login.status, 200, "{}", login.raw);
    drop(idle);
}

#[test]
fn an_event_stream_ends_when_its_session_logs_out() {
    let site = Site::start(Launch::default());
    let cookie = site.duty_cookie();
    let mut stream = http::connect_from(DUTY, &site.console, WAIT).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let host = &site.console;
    write!(
        stream,
        "GET /api/events HTTP/1.1\r\nHost: {host}\r\n{cookie}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("event: hello") {
        let n = stream.read(&mut buf).expect("the stream says hello");
        assert!(n > 0, "stream closed before hello");
        seen.extend_from_slice(&buf[..n]);
    }
    let out = http::request(&site.console, "POST", "/logout", &[&cookie], "");
    assert_eq!(out.status, 204, "{}", out.raw);
    let mut rest = Vec::new();
    let ended = stream.read_to_end(&mut rest);
    assert!(
        ended.is_ok(),
        "the event stream is still open after logout: {ended:?}; got {}",
        String::from_utf8_lossy(&rest)
    );
}

#[test]
fn config_check_refuses_weak_staff_hashes_with_exit_78() {
    let fixture =
        e2e::workspace_root().join("edge-config/tests/fixtures/broken/26-weak-argon2-hash.toml");
    let out = Command::new(bin("gateway"))
        .args(["config", "check"])
        .arg(&fixture)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert_eq!(stderr.matches("too weak").count(), 4, "{stderr}");
}

#[test]
fn the_data_directory_and_the_secret_links_are_private_whatever_the_umask() {
    // A data directory left world-readable by an older install, and a permissive umask.
    let site = Site::start(Launch {
        umask: Some(0o022),
        data_mode: Some(0o755),
        ..Launch::default()
    });
    let status = site.data.join("status.json");
    let deadline = Instant::now() + WAIT;
    while !status.exists() {
        assert!(Instant::now() < deadline, "no status.json");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(mode(&site.data), 0o700, "data directory");
    for file in ["shouwang.db", "status.json"] {
        assert_eq!(mode(&site.data.join(file)), 0o600, "{file}");
    }
    let out = site.dir.path().join("qr");
    let mut qr = Command::new(bin("gateway"));
    qr.args([
        "residents",
        "qr",
        "--base-url",
        "http://gateway",
        "--config",
    ])
    .arg(&site.config)
    .arg("--data-dir")
    .arg(&site.data)
    .arg("--out")
    .arg(&out);
    // SAFETY: umask is async-signal-safe.
    unsafe {
        qr.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        });
    }
    assert!(qr.status().unwrap().success());
    for file in ["b1-u1.svg", "index.html", "links.tsv"] {
        assert_eq!(mode(&out.join(file)), 0o600, "{file}");
    }
}

#[test]
fn an_idle_console_connection_is_closed_after_the_header_timeout() {
    let site = Site::start(Launch::default());
    let mut idle = http::connect_from(DUTY, &site.console, WAIT).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let opened = Instant::now();
    let mut rest = Vec::new();
    let closed = idle.read_to_end(&mut rest);
    assert!(closed.is_ok(), "still open after 20 s: {closed:?}");
    assert!(
        opened.elapsed() >= Duration::from_secs(5),
        "closed after {:?}, before any timeout",
        opened.elapsed()
    );
}

#[test]
fn resident_pages_on_their_own_listener_do_not_serve_the_staff_login() {
    let site = Site::start(Launch {
        extra: "[residents]\nbind = \"127.0.0.1:0\"\n".into(),
        ..Launch::default()
    });
    let ready = site
        .gateway
        .seen
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "gateway ready")
        .unwrap();
    let residents = ready["residents"].as_str().unwrap().to_owned();
    assert_ne!(residents, site.console, "a listener of their own");
    let out = site.dir.path().join("qr");
    let issued = Command::new(bin("gateway"))
        .args([
            "residents",
            "qr",
            "--base-url",
            "http://gateway",
            "--config",
        ])
        .arg(&site.config)
        .arg("--data-dir")
        .arg(&site.data)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(issued.status.success());
    let tsv = std::fs::read_to_string(out.join("links.tsv")).unwrap();
    let link = tsv
        .lines()
        .find_map(|l| l.strip_prefix("b1/u1\thttp://gateway"))
        .unwrap()
        .to_owned();
    assert_eq!(http::get(&residents, &link).0, 200, "the unit's page");
    assert_eq!(http::get(&site.console, &link).0, 404, "not on the console");
    let login = http::request(&residents, "GET", "/login", &[], "");
    assert_eq!(login.status, 404, "no staff login there: {}", login.raw);
    let api = http::request(&residents, "GET", "/api/alerts", &[], "");
    assert_eq!(api.status, 404, "no staff API there");
}
