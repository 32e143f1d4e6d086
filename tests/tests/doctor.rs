//! `gateway doctor`, the installer's commissioning report, against real parts: the demo
//! compound's configuration with its cameras on a real RTSP server (`sim camera`) but one on
//! a closed port, a real mosquitto upstream (TLS + password) or none at all, and a running
//! gateway whose broker hears one device and not the other.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use e2e::mqtt::Mqtt;
use e2e::sim::start_camera;
use e2e::upstream::{free_port, ServerCert, Upstream};
use e2e::{bin, demo_config_on_free_ports, write_config, Gateway};
use serde_json::Value;

/// `gateway doctor --config CONFIG ARGS…`, run to its end.
fn doctor(config: &Path, args: &[&str]) -> Output {
    Command::new(bin("gateway"))
        .arg("doctor")
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run gateway doctor")
}

fn text(out: &Output) -> String {
    format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The check named `name` in a JSON report.
fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name:?} in {report:#}"))
}

/// The demo compound with its cameras on `sim camera` (the kindergarten gate's on a closed
/// port) and its uplink on `uplink_port`.
fn demo_stack(
    dir: &Path,
    camera_port: u16,
    dead_port: u16,
    uplink_port: u16,
) -> std::path::PathBuf {
    let path = demo_config_on_free_ports(dir);
    let live = format!("rtsp://127.0.0.1:{camera_port}/cam0");
    let text = std::fs::read_to_string(&path)
        .expect("demo copy")
        .replace("rtsp://127.0.0.1:8554/lobby", &live)
        .replace("rtsp://127.0.0.1:8554/elevator", &live)
        .replace("rtsp://127.0.0.1:8554/shed", &live)
        .replace(
            "rtsp://127.0.0.1:8554/gate",
            &format!("rtsp://127.0.0.1:{dead_port}/gate"),
        )
        .replace("port = 1884", &format!("port = {uplink_port}"));
    std::fs::write(&path, text).expect("rewrite demo copy");
    path
}

#[test]
fn doctor_reports_a_dead_camera_and_an_unreachable_upstream_with_their_fixes() {
    let dir = tempfile::tempdir().unwrap();
    let (camera_port, dead_port, uplink_port) = (free_port(), free_port(), free_port());
    let _camera = start_camera(camera_port);
    let config = demo_stack(dir.path(), camera_port, dead_port, uplink_port);
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();

    let started = Instant::now();
    let out = doctor(&config, &["--data-dir", data_arg, "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed check exits 1:\n{}",
        text(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "bounded: {:?}",
        started.elapsed()
    );
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("JSON report ({e}):\n{}", text(&out)));
    assert_eq!(report["site"], "sw-demo-001");
    assert_eq!(check(&report, "config")["state"], "ok");
    assert_eq!(check(&report, "onnxruntime")["state"], "ok", "{report:#}");
    assert!(
        check(&report, "onnxruntime")["finding"]
            .as_str()
            .unwrap()
            .contains("input 416×416"),
        "{report:#}"
    );
    for live in ["cam-b1-lobby", "cam-b1-elevator", "cam-shed"] {
        let c = check(&report, &format!("camera {live}"));
        assert_eq!(c["state"], "ok", "{c:#}");
        assert!(
            c["finding"].as_str().unwrap().contains("h264 768×576"),
            "{c:#}"
        );
    }
    let dead = check(&report, "camera cam-kindergarten-gate");
    assert_eq!(dead["state"], "fail", "{dead:#}");
    assert_eq!(
        dead["finding"],
        format!("rtsp://127.0.0.1:{dead_port}/gate: Connection refused")
    );
    assert!(
        dead["fix"].as_str().unwrap().starts_with(&format!(
            "check the camera's address and that RTSP is on; test with `ffprobe -rtsp_transport tcp rtsp://127.0.0.1:{dead_port}/gate`"
        )),
        "{dead:#}"
    );
    let upstream = check(&report, "upstream");
    assert_eq!(upstream["state"], "fail", "{upstream:#}");
    assert_eq!(
        upstream["finding"],
        format!("connection refused at 127.0.0.1:{uplink_port}")
    );
    assert!(
        upstream["fix"]
            .as_str()
            .unwrap()
            .starts_with("check uplink.host/port and that the WAN link is up"),
        "{upstream:#}"
    );
    // Not running: the devices cannot be listed, and the doctor says how to get there.
    let devices = check(&report, "devices");
    assert_eq!(devices["state"], "warn", "{devices:#}");
    assert!(devices["fix"]
        .as_str()
        .unwrap()
        .contains("start the gateway"));
    assert_eq!(report["summary"]["failures"], 2, "{report:#}");

    // The same findings for a person: each problem once more under "To fix:".
    let out = doctor(&config, &["--data-dir", data_arg]);
    assert_eq!(out.status.code(), Some(1));
    let human = String::from_utf8_lossy(&out.stdout).into_owned();
    let fixes = human
        .split("To fix:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("a To fix: list:\n{human}"));
    assert!(
        fixes.contains("camera cam-kindergarten-gate (FAIL): check the camera's address"),
        "{human}"
    );
    assert!(
        fixes.contains("upstream (FAIL): check uplink.host/port and that the WAN link is up"),
        "{human}"
    );
    assert!(human.contains("2 failures"), "{human}");
}

#[test]
fn doctor_connects_to_a_reachable_upstream_over_tls_and_names_a_refused_login_and_a_rogue_certificate(
) {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start(dir.path());
    let config = write_config(dir.path(), &upstream.uplink_toml("gw.pass"));
    let data = dir.path().join("data");
    let out = doctor(&config, &["--data-dir", data.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let up = check(&report, "upstream");
    assert_eq!(up["state"], "ok", "{up:#}");
    assert!(
        up["finding"].as_str().unwrap().starts_with(&format!(
            "connected to 127.0.0.1:{} (TLS, user gateway)",
            upstream.tls_port
        )),
        "{up:#}"
    );
    assert_eq!(check(&report, "onnxruntime")["state"], "skipped");
    assert!(
        upstream.log_text().contains("shouwang-test-site-doctor"),
        "the doctor logs in under its own client id:\n{}",
        upstream.log_text()
    );

    let wrong = dir.path().join("wrong");
    std::fs::create_dir_all(&wrong).unwrap();
    let config = write_config(&wrong, &upstream.uplink_toml("wrong.pass"));
    let out = doctor(&config, &["--data-dir", data.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let up = check(&report, "upstream");
    assert_eq!(up["state"], "fail", "{up:#}");
    assert!(
        up["finding"]
            .as_str()
            .unwrap()
            .contains("refused the login"),
        "{up:#}"
    );
    assert!(
        up["fix"].as_str().unwrap().contains("uplink.password"),
        "{up:#}"
    );

    // A server whose certificate the configured CA did not sign: a TLS finding, not a refusal.
    let rogue_dir = dir.path().join("rogue");
    std::fs::create_dir_all(&rogue_dir).unwrap();
    let rogue = Upstream::start_with(&rogue_dir, ServerCert::Rogue);
    let config = write_config(&rogue_dir, &rogue.uplink_toml("gw.pass"));
    let out = doctor(&config, &["--data-dir", data.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let up = check(&report, "upstream");
    assert_eq!(up["state"], "fail", "{up:#}");
    assert!(
        up["finding"]
            .as_str()
            .unwrap()
            .starts_with(&format!("TLS with 127.0.0.1:{} failed: ", rogue.tls_port)),
        "{up:#}"
    );
    assert!(
        up["fix"].as_str().unwrap().contains("uplink.tls.ca"),
        "{up:#}"
    );
}

#[test]
fn doctor_on_an_invalid_config_lists_every_error_with_its_line_and_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[storage]\nquota_mb = \"lots\"\n\n[[devices]]\nid = \"smoke-1\"\nkind = \"toaster\"\nlocation = { area = \"nowhere\" }\n",
    );
    let out = doctor(&config, &[]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    let human = String::from_utf8_lossy(&out.stdout).into_owned();
    let file = config.display().to_string();
    let errors: Vec<&str> = human
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with(&file))
        .collect();
    assert!(errors.len() >= 2, "every error listed:\n{human}");
    assert!(
        errors
            .iter()
            .any(|l| l.starts_with(&format!("{file}:13:")) && l.contains("storage.quota_mb")),
        "the quota error at its line:\n{human}"
    );
    assert!(
        errors.iter().any(|l| l.starts_with(&format!("{file}:17:"))),
        "the device kind error at its line:\n{human}"
    );
    assert!(human.contains("gateway config check"), "{human}");
    assert!(
        !human.contains("upstream"),
        "nothing else is checked:\n{human}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_beside_a_running_gateway_lists_a_device_heard_and_one_never_heard() {
    let dir = tempfile::tempdir().unwrap();
    let (broker_port, console_port) = (free_port(), free_port());
    let config = write_config(
        dir.path(),
        r#"
[[locations.areas]]
id = "hall"
name = "Hall"
kind = "lobby"

[[devices]]
id = "smoke-heard"
kind = "smoke"
location = { area = "hall" }

[[devices]]
id = "smoke-silent"
kind = "smoke"
location = { area = "hall" }
"#,
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replacen("127.0.0.1:0", &format!("127.0.0.1:{broker_port}"), 1)
        .replacen("127.0.0.1:0", &format!("127.0.0.1:{console_port}"), 1);
    std::fs::write(&config, text).unwrap();
    let data = dir.path().join("data");
    let mut gateway = Gateway::start(&config, &data);
    let broker: SocketAddr = gateway.wait_ready();
    assert_eq!(broker.port(), broker_port);

    let mut child = tokio::process::Command::new(bin("gateway"))
        .arg("doctor")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen-s", "4", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start gateway doctor");
    // A sensor reporting every 300 ms while the doctor listens (a test button pressed).
    let sensor = Mqtt::connect(broker, "smoke-heard").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        sensor
            .publish("sensors/smoke-heard/state", r#"{"smoke":false}"#)
            .await;
        tokio::select! {
            status = child.wait() => break status.expect("doctor exit status"),
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
        assert!(tokio::time::Instant::now() < deadline, "doctor did not end");
    };
    let out = child.wait_with_output().await.expect("doctor output");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "JSON report ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(status.code(), Some(0), "warnings only:\n{report:#}");
    assert!(
        check(&report, "gateway")["finding"]
            .as_str()
            .unwrap()
            .starts_with("running (pid "),
        "{report:#}"
    );
    for port in ["port broker", "port console"] {
        let c = check(&report, port);
        assert_eq!(c["state"], "ok", "{c:#}");
        assert!(
            c["finding"]
                .as_str()
                .unwrap()
                .ends_with("in use by the running gateway"),
            "{c:#}"
        );
    }
    let devices = check(&report, "devices");
    assert_eq!(devices["state"], "warn", "{devices:#}");
    assert_eq!(
        devices["finding"],
        "1 of 2 devices heard within 4 s; never heard: smoke-silent"
    );
    let details: Vec<&str> = devices["details"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(details[0].starts_with("smoke-heard: heard "), "{details:?}");
    assert_eq!(
        details[1],
        "smoke-silent: never heard (sensors/smoke-silent/state)"
    );
    drop(gateway);
}
