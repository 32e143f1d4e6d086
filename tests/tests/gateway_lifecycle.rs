//! The daemon starts on a real configuration, says it is ready, and stops in order on the
//! one shutdown signal.

use std::time::{Duration, Instant};

use e2e::{demo_config_on_free_ports, Gateway};

#[test]
fn gateway_starts_logs_readiness_and_exits_cleanly_within_5s_of_sigterm() {
    let data = tempfile::tempdir().unwrap();
    let config = demo_config_on_free_ports(data.path());
    let mut gw = Gateway::start(&config, &data.path().join("data"));
    let ready = gw.wait_for_message("gateway ready", Duration::from_secs(30));
    assert_eq!(ready["site"], "sw-demo-001");

    let stop = Instant::now();
    gw.signal(libc::SIGTERM);
    let status = gw
        .wait_exit(Duration::from_secs(5))
        .expect("gateway still running 5 s after SIGTERM");
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        gw.seen.join("\n")
    );
    assert!(stop.elapsed() < Duration::from_secs(5));
    assert!(
        gw.seen
            .iter()
            .any(|l| l.contains("gateway stopped cleanly")),
        "no clean-stop line; log:\n{}",
        gw.seen.join("\n")
    );
    assert!(data.path().join("data/shouwang.db").exists());
}

#[test]
fn sigint_stops_the_gateway_as_cleanly_as_sigterm() {
    let data = tempfile::tempdir().unwrap();
    let config = demo_config_on_free_ports(data.path());
    let mut gw = Gateway::start(&config, &data.path().join("data"));
    gw.wait_for_message("gateway ready", Duration::from_secs(30));
    gw.signal(libc::SIGINT);
    let status = gw.wait_exit(Duration::from_secs(5)).expect("still running");
    assert!(status.success());
}

#[test]
fn two_gateways_cannot_share_one_data_directory() {
    let data = tempfile::tempdir().unwrap();
    let config = demo_config_on_free_ports(data.path());
    let mut first = Gateway::start(&config, data.path());
    first.wait_for_message("gateway ready", Duration::from_secs(30));
    let mut second = Gateway::start(&config, data.path());
    let status = second
        .wait_exit(Duration::from_secs(10))
        .expect("second gateway should refuse to start");
    assert!(!status.success());
    assert!(
        second
            .seen
            .iter()
            .any(|l| l.contains("in use by another gateway")),
        "log:\n{}",
        second.seen.join("\n")
    );
}

#[tokio::test]
async fn gateway_status_reports_a_running_daemon_its_outbox_and_rejected_sensor_messages() {
    let data = tempfile::tempdir().unwrap();
    let config = demo_config_on_free_ports(data.path());
    let dir = data.path().join("data");
    let mut gw = Gateway::start(&config, &dir);
    let broker = gw.wait_ready();
    // A smoke detector sends garbage twice, and something publishes for a device nobody has.
    for (topic, payload) in [
        ("sensors/b1-u1-1201-smoke/state", "{not json"),
        ("sensors/b1-u1-1201-smoke/state", "{not json"),
        ("sensors/ghost-7/state", r#"{"smoke":true}"#),
    ] {
        let published = std::process::Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &broker.port().to_string(),
                "-q",
                "1",
            ])
            .args(["-t", topic, "-m", payload])
            .status()
            .expect("mosquitto_pub (install it: ./x deps)");
        assert!(published.success());
    }
    // The daemon refreshes status.json every second: wait until it counts all three.
    e2e::eventually(
        Duration::from_secs(10),
        "status.json counts the three rejected messages",
        || {
            let report = gateway::status::status_report(&dir).map_err(|e| e.to_string())?;
            match report.ingest.as_ref().map(|i| i.rejected_total) {
                Some(n) if n >= 3 => Ok(()),
                seen => Err(format!("rejected_total {seen:?}")),
            }
        },
    )
    .await;
    let out = std::process::Command::new(e2e::bin("gateway"))
        .args(["status", "--json", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["running"], true);
    assert!(report["outbox"]["backlog_total"].is_u64(), "{report}");
    let ingest = &report["ingest"];
    assert_eq!(ingest["rejected_by_reason"]["invalid_json"], 2, "{report}");
    assert_eq!(
        ingest["rejected_by_reason"]["unknown_device"], 1,
        "{report}"
    );
    assert_eq!(
        ingest["rejected_by_device"]["b1-u1-1201-smoke"], 2,
        "{report}"
    );
    let text = std::process::Command::new(e2e::bin("gateway"))
        .args(["status", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("daemon:      running"), "{text}");
    assert!(text.contains("backlog:"), "{text}");
    assert!(
        text.contains("invalid_json 2") && text.contains("most rejected: b1-u1-1201-smoke 2"),
        "{text}"
    );
}

/// A minimal HTTP/1.1 GET over loopback; returns the status code.
fn http_status(addr: &str, path: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_daemon_serves_the_console_health_probe_and_refuses_the_api_without_a_session() {
    let data = tempfile::tempdir().unwrap();
    let config = demo_config_on_free_ports(data.path());
    let mut gw = Gateway::start(&config, &data.path().join("data"));
    let ready = gw.wait_for_message("gateway ready", Duration::from_secs(30));
    let console = ready["console"]
        .as_str()
        .expect("console address in the ready line")
        .to_owned();
    assert_eq!(http_status(&console, "/healthz"), 200);
    assert_eq!(http_status(&console, "/api/alerts"), 401);
    assert_eq!(http_status(&console, "/api/devices"), 401);
    gw.signal(libc::SIGTERM);
    assert!(gw.wait_exit(Duration::from_secs(5)).unwrap().success());
}
