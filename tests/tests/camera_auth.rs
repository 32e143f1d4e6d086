//! Cameras as installers have them: `sim camera --dual` serves real footage as a Hikvision-
//! style camera (H.265 main stream at 768×576, H.264 sub-stream at 640×480) behind RTSP
//! digest authentication (GStreamer's RTSP server); the real gateway logs in, analyses the
//! sub-stream, and takes its evidence from the main stream. The camera's password appears in
//! none of what the gateway shows: its log, `gateway status`, `gateway doctor`, the console
//! API and the alerts.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use e2e::mqtt::Mqtt;
use e2e::sim::start_dual_camera;
use e2e::{bin, eventually, http, write_config, Gateway};
use serde_json::Value;
use simulators::process;

const WAIT: Duration = Duration::from_secs(90);
/// The console login of the test configuration (`duty` / this password).
const CONSOLE_PASSWORD: &str = "shouwang-demo";
const STAFF: &str = r#"
[[console.staff]]
username = "duty"
display_name = "Duty officer"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2hvdXdhbmctZGVtby1zYQ$pMAMAJaZaTelU1nfxz3/8UfuGG6UrIxQfDFnKLoYXNk"
role = "admin"
"#;

/// The camera's password: characters that must be percent-encoded in a URL, and a
/// recognisable core to search for.
const PASSWORD: &str = "Zx9@cam:p/w#Q";
const PASSWORD_CORE: &str = "Zx9";

fn free_port() -> u16 {
    process::free_port().expect("a free loopback port")
}

/// A square watched all day by one camera whose streams and login are `camera` (TOML keys).
fn config(dir: &Path, camera: &str) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            r#"
[[locations.areas]]
id = "square"
name = "广场"
kind = "other"

[[cameras]]
id = "cam-gate"
location = {{ area = "square" }}
analyse_fps = 2
{camera}
[[cameras.zones]]
id = "all"
polygon = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
[[cameras.rules]]
kind = "intrusion"
zone = "all"
window = {{ from = "00:00", to = "00:00" }}
level = "orange"
{STAFF}"#
        ),
    )
}

/// (codec, width, height, frames decoded) of the first video stream of `path`.
fn ffprobe(path: &Path) -> (String, u64, u64, u64) {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-count_frames"])
        .args([
            "-show_entries",
            "stream=codec_name,width,height,nb_read_frames",
        ])
        .args(["-of", "json"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("run ffprobe");
    assert!(
        out.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("ffprobe JSON");
    let s = &v["streams"][0];
    (
        s["codec_name"].as_str().unwrap_or_default().to_owned(),
        s["width"].as_u64().unwrap_or(0),
        s["height"].as_u64().unwrap_or(0),
        s["nb_read_frames"]
            .as_str()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
    )
}

fn run(args: &[&str]) -> Output {
    Command::new(bin("gateway"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run gateway")
}

/// `gateway status --json` of the gateway whose data directory is `data`.
fn status(data: &Path) -> (Value, String) {
    let out = run(&["status", "--json", "--data-dir", data.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = serde_json::from_str(&text).unwrap_or(Value::Null);
    (v, format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
}

/// The password in none of its forms (raw, percent-encoded, its core) in `text`.
fn assert_no_password(what: &str, text: &str) {
    for form in [PASSWORD, "Zx9%40cam", PASSWORD_CORE] {
        assert!(
            !text.contains(form),
            "{what} shows the camera password:\n{text}"
        );
    }
}

/// The console's answers to `paths`, logged in as the duty officer.
fn console_answers(console: &str, paths: &[&str]) -> String {
    let body = serde_json::json!({ "username": "duty", "password": CONSOLE_PASSWORD }).to_string();
    let login = http::request(
        console,
        "POST",
        "/login",
        &["Content-Type: application/json"],
        &body,
    );
    assert_eq!(login.status, 200, "{}", login.raw);
    let cookie = login.header("set-cookie").expect("a session cookie");
    let cookie = format!("Cookie: {}", cookie.split(';').next().unwrap());
    let mut all = String::new();
    for path in paths {
        let r = http::request(console, "GET", path, &[&cookie], "");
        assert_eq!(r.status, 200, "GET {path}: {}", r.raw);
        all.push_str(&r.raw);
    }
    all
}

/// Waits until `path` exists (evidence is written after the alert, the clip a few seconds
/// later).
async fn written(path: &Path) {
    eventually(WAIT, &format!("{} written", path.display()), || {
        path.exists()
            .then_some(())
            .ok_or_else(|| "not yet".to_owned())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_digest_camera_is_analysed_on_its_h264_sub_stream_with_h265_main_stream_evidence_and_its_password_shown_nowhere(
) {
    let port = free_port();
    let _camera = start_dual_camera(port, "admin", PASSWORD);
    let dir = tempfile::tempdir().unwrap();
    let main = format!("rtsp://127.0.0.1:{port}/Streaming/Channels/101");
    let sub = format!("rtsp://127.0.0.1:{port}/Streaming/Channels/102");
    let toml_password = PASSWORD.replace('\\', "\\\\").replace('"', "\\\"");
    let config_path = config(
        dir.path(),
        &format!(
            "url = \"{main}\"\nsub_url = \"{sub}\"\nusername = \"admin\"\npassword = \"{toml_password}\"\n"
        ),
    );
    let data = dir.path().join("data");
    // stdout joins stderr, so that the log checked below is everything the gateway printed.
    let mut command = Command::new("sh");
    command
        .args(["-c", "exec \"$0\" \"$@\" 1>&2"])
        .arg(bin("gateway"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config_path)
        .arg("--data-dir")
        .arg(&data);
    let mut gw = Gateway::spawn(command);
    let ready = gw.wait_for_message("gateway ready", Duration::from_secs(30));
    let broker: SocketAddr = ready["broker"].as_str().unwrap().parse().unwrap();
    let console = ready["console"].as_str().unwrap().to_owned();
    let mut w = Mqtt::connect(broker, "w-camera-auth").await;
    w.subscribe("shouwang/test-site/alerts/#").await;

    // People walk through vtest.avi: the all-day intrusion rule fires on the sub-stream, and
    // fires again for each new person. The first trigger may come before the main stream's
    // first keyframe (its evidence is then the sub-stream's, as it should be): wait for one
    // with the main stream's evidence.
    let raised = w
        .collect(1, WAIT, |v| {
            v["kind"] == "intrusion" && v["readings"]["evidence_stream"] == "main"
        })
        .await;
    assert_eq!(
        raised.len(),
        1,
        "a person detected through the digest login, with the main stream's evidence"
    );
    let readings = &raised[0]["readings"];

    // The snapshot is the main stream's picture; the clip is the main stream's H.265.
    let snapshot = Path::new(readings["snapshot"].as_str().expect("a snapshot path"));
    written(snapshot).await;
    let (_, w_snap, h_snap, _) = ffprobe(snapshot);
    assert_eq!(
        (w_snap, h_snap),
        (768, 576),
        "snapshot at the main stream's size"
    );
    let clip = Path::new(readings["clip"].as_str().expect("a clip path"));
    written(clip).await;
    let (codec, w_clip, h_clip, frames) = ffprobe(clip);
    assert_eq!((codec.as_str(), w_clip, h_clip), ("hevc", 768, 576));
    assert!(frames >= 10, "the H.265 clip decodes: {frames} frames");

    // The sub-stream is analysed: frames analysed advance in `gateway status`.
    let analysed = |data: &Path| {
        let (v, text) = status(data);
        let cam = &v["cameras"]["cam-gate"];
        (cam["analysed"].as_u64(), cam["main_packets"].as_u64(), text)
    };
    let (first, main_packets, status_text) = analysed(&data);
    let first = first.unwrap_or_else(|| panic!("cameras in gateway status: {status_text}"));
    assert!(main_packets.unwrap_or(0) > 0, "{status_text}");
    assert_no_password("gateway status", &status_text);
    eventually(WAIT, "frames analysed advance", || {
        match analysed(&data).0 {
            Some(n) if n > first => Ok(n),
            other => Err(format!("{other:?} after {first}")),
        }
    })
    .await;

    // The installer's report opens both streams with the login, shows neither password.
    let out = Command::new(bin("gateway"))
        .args(["doctor", "--json", "--listen-s", "1", "--data-dir"])
        .arg(&data)
        .arg("--config")
        .arg(&config_path)
        .stdin(Stdio::null())
        .output()
        .expect("run gateway doctor");
    let doctor_text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_password("gateway doctor", &doctor_text);
    let report: Value = serde_json::from_slice(&out.stdout).expect("doctor JSON");
    let check = |name: &str| {
        report["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no check {name:?}: {doctor_text}"))
    };
    let main_check = check("camera cam-gate main stream");
    assert_eq!(main_check["state"], "ok", "{main_check}");
    let finding = main_check["finding"].as_str().unwrap_or_default();
    assert!(finding.contains("hevc 768×576"), "{finding}");
    assert!(
        finding.starts_with("rtsp://admin:***@127.0.0.1:"),
        "{finding}"
    );
    let sub_check = check("camera cam-gate sub-stream");
    assert_eq!(sub_check["state"], "ok", "{sub_check}");
    assert!(
        sub_check["finding"]
            .as_str()
            .unwrap_or_default()
            .contains("h264 640×480"),
        "{sub_check}"
    );

    // The console's cameras and alerts (the evidence JSON) show no password either.
    let answers = console_answers(&console, &["/api/cameras", "/api/alerts"]);
    assert!(answers.contains("cam-gate"), "{answers}");
    assert_no_password("the console API", &answers);
    assert_no_password("the alert event", &raised[0].to_string());

    // Nor does what the gateway printed (stdout and stderr), which does name the stream it
    // logged in to.
    gw.drain_log();
    let log = gw.seen.join("\n");
    assert!(log.contains("rtsp://admin:***@127.0.0.1:"), "{log}");
    assert_no_password("the gateway log", &log);
    drop(gw);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_camera_password_reports_the_camera_down_with_an_authentication_error_and_no_password(
) {
    let port = free_port();
    let _camera = start_dual_camera(port, "admin", PASSWORD);
    let dir = tempfile::tempdir().unwrap();
    // The login written in the URL (percent-encoded), inherited by the sub-stream.
    let config_path = config(
        dir.path(),
        &format!(
            "url = \"rtsp://admin:Zx9%40wrong%2Fpw@127.0.0.1:{port}/Streaming/Channels/101\"\n\
             sub_url = \"rtsp://127.0.0.1:{port}/Streaming/Channels/102\"\n"
        ),
    );
    let data = dir.path().join("data");
    let mut gw = Gateway::start(&config_path, &data);
    let broker: SocketAddr = gw.wait_ready();
    let mut w = Mqtt::connect(broker, "w-camera-auth-wrong").await;
    w.subscribe("shouwang/test-site/alerts/#").await;

    // Active, whether seen live as `raised` or, when both streams failed before the watcher
    // subscribed, as the retained record's latest event (`updated`: the reason then named
    // the second stream too).
    let down = w
        .collect(1, WAIT, |v| {
            v["kind"] == "camera_down" && v["event"] != "resolved"
        })
        .await;
    assert_eq!(down.len(), 1, "the refused login raises camera_down");
    assert_eq!(down[0]["source"]["id"], "cam-gate");
    let reason = down[0]["readings"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("401") && reason.contains("rtsp://admin:***@127.0.0.1:"),
        "an authentication error naming the redacted stream: {reason}"
    );
    assert_no_password("camera_down", &down[0].to_string());

    // Still running, retrying, and never logging the password.
    let started = Instant::now();
    eventually(
        WAIT,
        "a reconnection attempt after the refused login",
        || {
            let (v, text) = status(&data);
            match v["cameras"]["cam-gate"]["reconnects"].as_u64() {
                Some(n) if n >= 2 => Ok(text),
                other => Err(format!("{other:?}: {text}")),
            }
        },
    )
    .await;
    assert!(started.elapsed() < WAIT);
    assert!(
        gw.wait_exit(Duration::ZERO).is_none(),
        "the gateway runs on"
    );
    gw.drain_log();
    let log = gw.seen.join("\n");
    for form in ["Zx9%40wrong", "Zx9@wrong", "wrong%2Fpw", "wrong/pw"] {
        assert!(
            !log.contains(form),
            "the gateway log shows the password:\n{log}"
        );
    }
    let (_, status_text) = status(&data);
    assert!(!status_text.contains("wrong"), "{status_text}");
    drop(gw);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_main_stream_that_fails_while_the_sub_stream_runs_reports_the_camera_down_and_the_evidence_comes_from_the_sub_stream(
) {
    let port = free_port();
    let _camera = start_dual_camera(port, "admin", PASSWORD);
    let dir = tempfile::tempdir().unwrap();
    let toml_password = PASSWORD.replace('\\', "\\\\").replace('"', "\\\"");
    // The main stream's path is wrong (the camera has no channel 103).
    let config_path = config(
        dir.path(),
        &format!(
            "url = \"rtsp://127.0.0.1:{port}/Streaming/Channels/103\"\n\
             sub_url = \"rtsp://127.0.0.1:{port}/Streaming/Channels/102\"\n\
             username = \"admin\"\npassword = \"{toml_password}\"\n"
        ),
    );
    let data = dir.path().join("data");
    let mut gw = Gateway::start(&config_path, &data);
    let broker: SocketAddr = gw.wait_ready();
    let mut w = Mqtt::connect(broker, "w-camera-main-down").await;
    w.subscribe("shouwang/test-site/alerts/#").await;

    // Until both kinds are in: camera_down may come twice (its retained copy and the live
    // event when it is raised while the subscription is made), or be updated.
    let mut events: Vec<serde_json::Value> = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    let has = |events: &[serde_json::Value], kind: &str| events.iter().any(|v| v["kind"] == kind);
    while !(has(&events, "camera_down") && has(&events, "intrusion")) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match w.next(left).await {
            Some(m) => {
                let v = m.json();
                if (v["kind"] == "camera_down" || v["kind"] == "intrusion")
                    && v["event"] != "resolved"
                {
                    events.push(v);
                }
            }
            None => break,
        }
    }
    let down = events
        .iter()
        .find(|v| v["kind"] == "camera_down")
        .unwrap_or_else(|| panic!("camera_down raised: {events:?}"));
    let reason = down["readings"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("main stream: cannot open rtsp://admin:***@127.0.0.1:")
            && reason.contains("404"),
        "the main stream named as the one down: {reason}"
    );
    assert_no_password("camera_down", &down.to_string());
    // The analysis goes on on the sub-stream, and so does the evidence.
    let intrusion = events
        .iter()
        .find(|v| v["kind"] == "intrusion")
        .unwrap_or_else(|| panic!("the sub-stream is still analysed: {events:?}"));
    assert_eq!(intrusion["readings"]["evidence_stream"], "sub");
    let snapshot = Path::new(
        intrusion["readings"]["snapshot"]
            .as_str()
            .expect("a snapshot"),
    );
    written(snapshot).await;
    let (_, w_snap, h_snap, _) = ffprobe(snapshot);
    assert_eq!((w_snap, h_snap), (640, 480), "the sub-stream's picture");
    gw.drain_log();
    assert_no_password("the gateway log", &gw.seen.join("\n"));
    drop(gw);
}
