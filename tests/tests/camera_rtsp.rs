//! A camera over real RTSP: `sim camera` (GStreamer's RTSP server) streams real footage,
//! the real gateway analyses it; killing the server raises `camera_down`, restarting it on
//! the same port resolves it.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use e2e::mqtt::Mqtt;
use e2e::sim::start_camera;
use e2e::{bin, write_config, Gateway};
use simulators::process;

fn free_port() -> u16 {
    process::free_port().expect("a free loopback port")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_rtsp_camera_is_analysed_and_killing_its_server_raises_then_resolves_camera_down() {
    let port = free_port();
    let mut camera = Some(start_camera(port));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            r#"
[[locations.areas]]
id = "square"
name = "广场"
kind = "other"

[[cameras]]
id = "cam-square"
url = "rtsp://127.0.0.1:{port}/cam0"
location = {{ area = "square" }}
analyse_fps = 2
[[cameras.zones]]
id = "all"
polygon = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
[[cameras.rules]]
kind = "intrusion"
zone = "all"
window = {{ from = "00:00", to = "00:00" }}
level = "orange"
"#
        ),
    );
    let mut gw = Gateway::start(&config, &dir.path().join("data"));
    let broker: SocketAddr = gw.wait_ready();
    let mut w = Mqtt::connect(broker, "w-camera").await;
    w.subscribe("shouwang/test-site/alerts/#").await;

    // People walk through vtest.avi: the all-day intrusion rule proves frames are analysed.
    let intrusion = w
        .collect(1, Duration::from_secs(60), |v| {
            v["kind"] == "intrusion" && v["event"] == "raised"
        })
        .await;
    assert_eq!(intrusion.len(), 1, "a person detected in the RTSP stream");
    assert_eq!(intrusion[0]["source"]["id"], "cam-square");

    // Kill the RTSP server outright (SIGKILL), as a crash would.
    let mut killed = camera.take().expect("the camera runs");
    let _ = killed.0.kill();
    drop(killed);
    let down = w
        .collect(1, Duration::from_secs(60), |v| {
            v["kind"] == "camera_down" && v["event"] == "raised"
        })
        .await;
    assert_eq!(down.len(), 1, "killing the RTSP server raises camera_down");
    assert_eq!(down[0]["source"]["id"], "cam-square");

    let _camera = start_camera(port);
    let up = w
        .collect(1, Duration::from_secs(60), |v| {
            v["kind"] == "camera_down" && v["event"] == "resolved"
        })
        .await;
    assert_eq!(up.len(), 1, "the restarted server resolves camera_down");
    assert_eq!(up[0]["id"], down[0]["id"]);
    drop(gw);
}

#[test]
fn the_installer_tool_detects_cyclists_in_an_http_mpeg_ts_camera_stream() {
    let http_port = free_port();
    let mut sim = Command::new(bin("sim"));
    sim.args([
        "camera",
        "--loop",
        "--port",
        "0",
        "--http-port",
        &http_port.to_string(),
    ])
    .arg("--footage")
    .arg(e2e::sim::footage("bikes.mp4"));
    let _camera = e2e::sim::spawn_camera(sim, http_port);
    let out = Command::new(bin("gateway"))
        .args([
            "detect",
            "--json",
            "--fps",
            "2",
            "--max-seconds",
            "6",
            "--input",
        ])
        .arg(format!("http://127.0.0.1:{http_port}/cam0.ts"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\"bicycle\"")
            || text.contains("\"motorcycle\"")
            || text.contains("\"person\""),
        "objects detected in the HTTP stream: {text}"
    );
}
